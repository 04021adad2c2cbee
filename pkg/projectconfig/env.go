package projectconfig

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// EnvPrefix starts the environment variables that override lucid.yaml.
const EnvPrefix = "LUCID_"

// ApplyEnv overrides values from the file with LUCID_* environment
// variables named after their key path: local.state_dir is
// LUCID_LOCAL_STATE_DIR, targets.pi.host is LUCID_TARGETS_PI_HOST (for a
// target the file defines), platforms is LUCID_PLATFORMS (comma-separated).
// Flags, applied by the caller afterwards, beat both.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	if err := applyEnv(reflect.ValueOf(c).Elem(), EnvPrefix, getenv); err != nil {
		return err
	}
	c.applyDefaults()
	return c.validate("environment")
}

func applyEnv(v reflect.Value, prefix string, getenv func(string) string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || name == "" {
			continue
		}
		key := prefix + strings.ToUpper(name)
		fv := v.Field(i)
		switch fv.Kind() {
		case reflect.Struct:
			if err := applyEnv(fv, key+"_", getenv); err != nil {
				return err
			}
		case reflect.Map:
			keys := fv.MapKeys()
			sort.Slice(keys, func(a, b int) bool { return keys[a].String() < keys[b].String() })
			for _, k := range keys {
				elem := reflect.New(fv.Type().Elem()).Elem()
				elem.Set(fv.MapIndex(k))
				ekey := key + "_" + strings.ToUpper(k.String())
				if elem.Kind() == reflect.Struct {
					if err := applyEnv(elem, ekey+"_", getenv); err != nil {
						return err
					}
				} else if s := getenv(ekey); s != "" {
					if err := setScalar(elem, ekey, s); err != nil {
						return err
					}
				}
				fv.SetMapIndex(k, elem)
			}
		default:
			if s := getenv(key); s != "" {
				if err := setScalar(fv, key, s); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func setScalar(v reflect.Value, key, s string) error {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%s=%q: not a whole number", key, s)
		}
		v.SetInt(int64(n))
	case reflect.Slice:
		var items []string
		for _, it := range strings.Split(s, ",") {
			if it = strings.TrimSpace(it); it != "" {
				items = append(items, it)
			}
		}
		v.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("%s: cannot be set from the environment", key)
	}
	return nil
}
