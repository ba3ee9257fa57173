package detector

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"gopkg.in/yaml.v3"
)

// Override is a group's settings for one rule. Only the keys it names
// replace the global settings; every other key is inherited. Presence, not
// value, decides, so that a group can set a number to zero (switch the slow
// window's threshold off, min_first_contacts: 0) without that meaning
// "inherit".
type Override[T any] struct {
	yaml []byte     // the group's keys, as written in the file
	set  func(t *T) // or the same from Go (tests, programs embedding wormsign)
}

// Set returns an override made in Go: set changes the keys it wants on a
// copy of the global settings.
func Set[T any](set func(t *T)) Override[T] { return Override[T]{set: set} }

// UnmarshalYAML keeps the group's keys to apply over the global settings
// later; unknown keys are refused now, like everywhere in the file.
func (o *Override[T]) UnmarshalYAML(node *yaml.Node) error {
	raw, err := yaml.Marshal(node)
	if err != nil {
		return err
	}
	var probe T
	if err := decodeStrict(raw, &probe); err != nil {
		return err
	}
	o.yaml = raw
	return nil
}

// apply returns global with the override's keys replaced.
func (o Override[T]) apply(global T) (T, error) {
	out := global
	if o.yaml != nil {
		if err := decodeStrict(o.yaml, &out); err != nil {
			return global, err
		}
	}
	if o.set != nil {
		o.set(&out)
	}
	return out, nil
}

// decodeStrict decodes YAML onto v, keeping what v holds for keys the text
// does not name, and refusing keys v does not have.
func decodeStrict(raw []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("invalid override: %w", err)
	}
	return nil
}
