package mesh

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/meshtls"
)

// TestMeshTokenRotation: after LUCID_MESH_TOKEN is rotated, services
// holding the enrolment token of the new mesh token and of the previous
// one both obtain their leaf and check the trust bundle, until the
// previous token's retirement; a retired token gets neither.
func TestMeshTokenRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		newToken := strings.Repeat("n", 48)
		retiredToken := strings.Repeat("r", 48)
		start := time.Now()
		var mem testenv.MemNet
		c := startControllerOn(t, &mem, map[string]string{
			"LUCID_MESH_TOKEN": newToken,
			keyring.MeshPrevious: keyring.Format([]keyring.Entry{
				{Value: []byte(testToken), Until: start.Add(time.Hour)},
				{Value: []byte(retiredToken), Until: start.Add(-time.Minute)},
			}),
		})
		obtain := func(meshToken, svc string) error {
			r := meshtls.NewRemote(c.url, meshapi.EnrolmentToken(meshToken, svc))
			r.SetDialContext(c.dial)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := r.Bundle(ctx, svc); err != nil {
				return err
			}
			_, err := meshtls.Obtain(ctx, svc, r, meshtls.Options{})
			return err
		}
		for _, tc := range []struct {
			name, token string
			ok          bool
		}{
			{"new token", newToken, true},
			{"previous token", testToken, true},
			{"retired token", retiredToken, false},
		} {
			err := obtain(tc.token, "engine")
			if tc.ok && err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			if !tc.ok && err == nil {
				t.Errorf("%s: a leaf was issued", tc.name)
			}
		}
		// The issue endpoint itself refuses the retired token before it
		// looks at the request (the bundle's MAC mismatch comes first in
		// obtain).
		issue := func(meshToken string) error {
			_, err := c.bearer(meshapi.EnrolmentToken(meshToken, "engine")).Issue(context.Background(), "engine", []byte("not a CSR"))
			return err
		}
		if err := issue(retiredToken); err == nil || !strings.Contains(err.Error(), "enrolment token is required") {
			t.Errorf("issue with the retired token: %v", err)
		}
		if err := issue(testToken); err == nil || strings.Contains(err.Error(), "enrolment token is required") {
			t.Errorf("issue with the previous token: %v, want the CSR refused, not the token", err)
		}
		// The previous token retires an hour after the rotation.
		tm := time.NewTimer(time.Hour)
		<-tm.C
		if err := obtain(testToken, "engine"); err == nil {
			t.Error("previous token after its retirement: a leaf was issued")
		}
		if err := issue(testToken); err == nil || !strings.Contains(err.Error(), "enrolment token is required") {
			t.Errorf("issue with the previous token after its retirement: %v", err)
		}
		if err := obtain(newToken, "gateway"); err != nil {
			t.Errorf("new token after the previous one retired: %v", err)
		}
	})
}
