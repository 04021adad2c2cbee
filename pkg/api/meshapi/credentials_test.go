package meshapi

import (
	"regexp"
	"testing"
)

// The derivations are a contract between the controller and whatever
// renders the services' environments: known answers pin them, so a change
// that would lock every deployed service out fails here first.
func TestCredentialsKnownAnswers(t *testing.T) {
	const mesh = "mesh-token-0123456789abcdef0123456789"
	if got, want := EnrolmentToken(mesh, "engine"), "9d16dd83a9912a6e80c49bad27add00d645fefcf8dcc484711e46fc9bc03bc9d"; got != want {
		t.Errorf("EnrolmentToken = %s, want %s (HMAC-SHA256(mesh, \"lucid-mesh-enrolment-v1/engine\"))", got, want)
	}
	acc, sec := ConsulToken("0b1f4c52-7a4e-4f53-9d4c-5b8e0f6a1c3d", "gateway")
	if acc != "fe1f26e5-99d9-484d-91cc-2a3021ca88ff" || sec != "0d5030bc-713c-4486-9149-9632ab6ad740" {
		t.Errorf("ConsulToken = %s, %s", acc, sec)
	}
}

func TestCredentialsAreDistinct(t *testing.T) {
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]string{}
	add := func(what, v string) {
		if prev, ok := seen[v]; ok {
			t.Errorf("%s equals %s", what, prev)
		}
		seen[v] = what
	}
	for _, secret := range []string{"mesh-token-0123456789abcdef0123456789", "another-token-0123456789abcdef01234567"} {
		for _, svc := range []string{"gateway", "engine", "anchoring", "blocks", "datachain", "mesh"} {
			add("enrolment "+secret[:4]+"/"+svc, EnrolmentToken(secret, svc))
			acc, sec := ConsulToken(secret, svc)
			if !uuid4.MatchString(acc) || !uuid4.MatchString(sec) {
				t.Errorf("ConsulToken(%s) = %s, %s: not version-4 UUIDs", svc, acc, sec)
			}
			add("accessor "+secret[:4]+"/"+svc, acc)
			add("secret "+secret[:4]+"/"+svc, sec)
		}
	}
}
