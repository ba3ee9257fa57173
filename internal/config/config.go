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
	keys := map[string]envKey{}
	if err := collectKeys(reflect.ValueOf(cfg).Elem(), "", "", keys); err != nil {
		return err
	}
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
		if err := setFromString(field.value, value); err != nil {
			if secretKey(name) {
				// The value may be a secret: never quoted.
				return fmt.Errorf("invalid value for %s (not shown: it may hold a secret): %s", name, redact(err.Error(), value))
			}
			return fmt.Errorf("invalid value %q for %s: %w", value, name, err)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown configuration variable(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// envKey is a configuration key reachable from the environment.
type envKey struct {
	path  string // as in the file: detector.smtp_fanout.threshold
	value reflect.Value
}

// collectKeys maps environment names to the keys they set. Two keys that
// would share one name (a_b.c and a.b_c both become A_B_C) are an error:
// the variable would silently set only one of them.
func collectKeys(v reflect.Value, envPrefix, pathPrefix string, keys map[string]envKey) error {
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
			if err := collectKeys(fv, envPrefix, pathPrefix, keys); err != nil {
				return err
			}
			continue
		}
		if tag == "" {
			tag = strings.ToLower(sf.Name)
		}
		name, path := envPrefix+strings.ToUpper(tag), pathPrefix+tag
		if fv.Kind() == reflect.Struct && !reflect.PointerTo(fv.Type()).Implements(textUnmarshaler) {
			if err := collectKeys(fv, name+"_", path+".", keys); err != nil {
				return err
			}
			continue
		}
		if other, dup := keys[name]; dup {
			return fmt.Errorf("configuration keys %s and %s both map to %s%s", other.path, path, EnvPrefix, name)
		}
		keys[name] = envKey{path: path, value: fv}
	}
	return nil
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
