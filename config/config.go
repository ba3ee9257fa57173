// Package config loads wormsign's YAML configuration and applies WORMSIGN_*
// environment overrides on top of it. Every key in the file can also be set
// from the environment: nested keys join with "_", so detector.smtp_fanout.
// threshold becomes WORMSIGN_DETECTOR_SMTP_FANOUT_THRESHOLD; the keys of a
// struct tagged `yaml:",inline"` are its parent's. Lists are comma
// separated. Unknown keys, in the file or the environment, are errors: a typo
// must not silently fall back to a default.
package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable that overrides a key.
const EnvPrefix = "WORMSIGN_"

// Load fills cfg (a pointer to a struct holding defaults) from the YAML file
// at path (skipped when empty) and then from environ entries ("KEY=value").
func Load(cfg any, path string, environ []string) error {
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("cannot read configuration: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		// An empty file decodes to io.EOF: it means "all defaults".
		if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("invalid configuration file %s: %w", path, err)
		}
	}
	keys := map[string]reflect.Value{}
	collectKeys(reflect.ValueOf(cfg).Elem(), "", keys)
	var unknown []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		field, found := keys[strings.TrimPrefix(name, EnvPrefix)]
		if !found {
			unknown = append(unknown, name)
			continue
		}
		if err := setFromString(field, value); err != nil {
			return fmt.Errorf("invalid value %q for %s: %w", value, name, err)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown configuration variable(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

// Keys lists every environment variable name that Load understands.
func Keys(cfg any) []string {
	keys := map[string]reflect.Value{}
	collectKeys(reflect.ValueOf(cfg).Elem(), "", keys)
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, EnvPrefix+k)
	}
	sort.Strings(names)
	return names
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

func collectKeys(v reflect.Value, prefix string, keys map[string]reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if tag == "-" || !sf.IsExported() {
			continue
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && slices.Contains(strings.Split(opts, ","), "inline") {
			// Its keys are the parent's, as in YAML.
			collectKeys(fv, prefix, keys)
			continue
		}
		if tag == "" {
			tag = strings.ToLower(sf.Name)
		}
		name := prefix + strings.ToUpper(tag)
		if fv.Kind() == reflect.Struct && !reflect.PointerTo(fv.Type()).Implements(textUnmarshaler) {
			collectKeys(fv, name+"_", keys)
			continue
		}
		keys[name] = fv
	}
}

func setFromString(v reflect.Value, s string) error {
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshaler) {
		return v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(strings.TrimSpace(s)))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if v.Type() == reflect.TypeFor[time.Duration]() {
			d, err := time.ParseDuration(s)
			if err != nil {
				return err
			}
			v.SetInt(int64(d))
			return nil
		}
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		out := reflect.MakeSlice(v.Type(), len(parts), len(parts))
		for i, p := range parts {
			if err := setFromString(out.Index(i), p); err != nil {
				return err
			}
		}
		v.Set(out)
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}
