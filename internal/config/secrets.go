package config

import (
	"fmt"
	"os"
	"reflect"
	"strings"
)

// ReadSecretFiles fills every secret that comes from a file: a string key
// NAME_file (kafka.sasl.password_file, clickhouse.password_file,
// http.token_file, http.tokens[].token_file, sink.webhooks[].secret_file)
// beside a string key NAME is read, one trailing newline dropped, into
// NAME. Setting both is an error, as is an empty or unreadable file;
// errors name the key (http.tokens[1].token) and the path,
// never what the file holds. In every *_file path (these and the tls
// sections' ca_file, cert_file, key_file), ${CREDENTIALS_DIRECTORY} (or
// $CREDENTIALS_DIRECTORY) is replaced by that variable of environ: the
// directory where systemd's LoadCredential= puts a service's credentials.
func ReadSecretFiles(cfg any, environ []string) error {
	credentials := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CREDENTIALS_DIRECTORY="); ok {
			credentials = v
		}
	}
	return readSecretFiles(reflect.ValueOf(cfg).Elem(), "", credentials)
}

func readSecretFiles(v reflect.Value, path, credentials string) error {
	switch v.Kind() {
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if err := readSecretFiles(v.Index(i), fmt.Sprintf("%s[%d]", path, i), credentials); err != nil {
				return err
			}
		}
		return nil
	case reflect.Struct:
	default:
		return nil
	}
	t := v.Type()
	fields := map[string]reflect.Value{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(sf.Name)
		}
		fv := v.Field(i)
		if strings.Contains(opts, "inline") {
			if err := readSecretFiles(fv, path, credentials); err != nil {
				return err
			}
			continue
		}
		fields[tag] = fv
		sub := tag
		if path != "" {
			sub = path + "." + tag
		}
		if fv.Kind() == reflect.Struct || (fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct) {
			if err := readSecretFiles(fv, sub, credentials); err != nil {
				return err
			}
		}
	}
	for tag, file := range fields {
		name, ok := strings.CutSuffix(tag, "_file")
		if !ok || file.Kind() != reflect.String || file.String() == "" {
			continue
		}
		key := name
		if path != "" {
			key = path + "." + name
		}
		// Every *_file path (also tls.ca_file, cert_file, key_file) may
		// name the credentials directory.
		p := os.Expand(file.String(), func(v string) string {
			if v == "CREDENTIALS_DIRECTORY" {
				return credentials
			}
			return "$" + v
		})
		if strings.Contains(file.String(), "CREDENTIALS_DIRECTORY") && credentials == "" {
			return fmt.Errorf("%s_file: %s names $CREDENTIALS_DIRECTORY, which is not set (systemd sets it for a service with LoadCredential=)", key, file.String())
		}
		file.SetString(p)
		secret, found := fields[name]
		if !found || secret.Kind() != reflect.String {
			continue // a file the component reads itself
		}
		if secret.String() != "" {
			return fmt.Errorf("%s and %s_file are both set: give one", key, key)
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("%s_file: cannot read %s: %w", key, p, err)
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
		if s == "" {
			return fmt.Errorf("%s_file: %s is empty", key, p)
		}
		secret.SetString(s)
	}
	return nil
}

// secretKey tells whether an environment variable may hold a secret: its
// value is then never quoted in an error.
func secretKey(name string) bool {
	for _, s := range []string{"PASSWORD", "TOKEN", "SECRET", "WEBHOOKS"} {
		if strings.Contains(name, s) && !strings.HasSuffix(name, "_FILE") {
			return true
		}
	}
	return false
}

// redact removes from msg the secrets value could hold: all of it, and
// what follows "secret=" in a webhook list or "token=" in a list of
// credentials (WORMSIGN_HTTP_TOKENS).
func redact(msg, value string) string {
	var secrets []string
	for _, item := range strings.Split(value, ",") {
		for _, part := range strings.Split(item, ";") {
			for _, key := range []string{"secret=", "token="} {
				if v, ok := strings.CutPrefix(strings.TrimSpace(part), key); ok && v != "" {
					secrets = append(secrets, v)
				}
			}
		}
	}
	secrets = append(secrets, value)
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}
