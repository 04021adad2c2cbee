package mesh

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/ratelimit"
	"github.com/pickme/lucid/pkg/service"
)

func (a *App) routes(srv *service.Server) {
	srv.Handle("GET /certificates/ca", a.handleBundle)
	srv.Handle("POST /certificates/{service}", a.handleIssue)
	srv.Handle("POST /ca/rotate", a.operator(a.handleRotate))
	srv.Handle("GET /services", a.member(a.handleServices))
	srv.Handle("GET /services/{name}", a.member(a.handleServices))
	srv.Handle("POST /services/register", a.operator(a.handleRegister))
	srv.Handle("DELETE /services/{name}", a.operator(a.handleDeregister))
	srv.Handle("GET /envoy/{service}/bootstrap", a.member(a.handleEnvoy))
}

// enrolmentTokens derives, from the mesh token, the enrolment token of
// every service that obtains its leaf from the controller: all but the
// controller itself, whose leaf comes from its own CA in-process, so no
// credential anywhere yields the controller's identity.
func enrolmentTokens(meshToken string) map[string][]byte {
	// The operator's key MACs only the bundle: no leaf is issued for a
	// name the catalog does not hold.
	out := map[string][]byte{meshapi.OperatorBundle: []byte(meshapi.EnrolmentToken(meshToken, meshapi.OperatorBundle))}
	for _, s := range catalog.Services {
		if s.Name != catalog.MeshService {
			out[s.Name] = []byte(meshapi.EnrolmentToken(meshToken, s.Name))
		}
	}
	return out
}

// previousEnrolment are the enrolment tokens derived from a previous mesh
// token, accepted until its retirement (zero: until it is removed).
type previousEnrolment struct {
	until  time.Time
	tokens map[string][]byte
}

// enrolmentKeys are svc's enrolment tokens that count now: the current
// one first, then those of previous mesh tokens not yet retired.
func (a *App) enrolmentKeys(svc string) [][]byte {
	cur, ok := a.enrolment[svc]
	if !ok {
		return nil
	}
	out := [][]byte{cur}
	now := a.now()
	for _, p := range a.previous {
		if p.until.IsZero() || now.Before(p.until) {
			out = append(out, p.tokens[svc])
		}
	}
	return out
}

// enrolled reports whether r bears one of svc's enrolment tokens,
// compared in constant time.
func (a *App) enrolled(r *http.Request, svc string) bool {
	tok, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !bearer {
		return false
	}
	found := 0
	for _, want := range a.enrolmentKeys(svc) {
		found |= subtle.ConstantTimeCompare([]byte(tok), want)
	}
	return found == 1
}

var errEnrolment = service.Errorf(http.StatusUnauthorized, service.CodeAuth, "this service's enrolment token is required")

// operator guards what only the operator may do: rotate the root, and
// register or deregister outside services. The controller is exempt from
// the server's refusal of unknown callers (it authenticates enrolment
// itself), so the check is made here.
func (a *App) operator(h service.HandlerFunc) service.HandlerFunc {
	guarded := service.ForOperator(h)
	return func(w http.ResponseWriter, r *http.Request) error {
		if !service.IsOperator(r.Context()) {
			who := "an unknown caller"
			if caller, ok := service.CallerOf(r.Context()); ok {
				who = "service " + caller
			}
			a.logger.Warn("mesh: refused an operator action without the operator credential", "caller", who, "remote", r.RemoteAddr, "method", r.Method, "path", service.LogPath(r.URL.Path))
		}
		return guarded(w, r)
	}
}

// member lets in the services of the mesh (over mTLS, verified in the
// handshake) and the operator: the registry and the Envoy bootstraps.
func (a *App) member(h service.HandlerFunc) service.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if _, ok := service.CallerOf(r.Context()); ok || service.IsOperator(r.Context()) {
			return h(w, r)
		}
		a.logger.Warn("mesh: refused a request without a mesh certificate or the operator credential", "remote", r.RemoteAddr, "path", service.LogPath(r.URL.Path))
		return service.Errorf(http.StatusUnauthorized, service.CodeAuth, "a mesh certificate or the operator credential is required")
	}
}

// handleBundle answers the trust bundle, MAC'd with the enrolment token of
// the service that asks, which is all that service holds to check it.
func (a *App) handleBundle(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	nonce, svc := q.Get("nonce"), q.Get("service")
	if _, err := hex.DecodeString(nonce); err != nil || len(nonce) != meshapi.NonceLen {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "nonce must be %d hex digits", meshapi.NonceLen)
	}
	keys := a.enrolmentKeys(svc)
	if len(keys) == 0 {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "service must name the Lucid service asking (%s)", strings.Join(slices.Sorted(maps.Keys(a.enrolment)), ", "))
	}
	body := meshca.EncodeCerts(a.ca.Bundle())
	w.Header().Set("Content-Type", "application/pem-certificate-chain")
	// One MAC per enrolment token that counts: a service holding the token
	// of before a rotation checks the bundle with it.
	for _, key := range keys {
		w.Header().Add(meshapi.BundleMACHeader, meshapi.BundleMAC(string(key), nonce, body))
	}
	w.Header().Set("Cache-Control", "no-store")
	_, err := w.Write(body)
	return err
}

// handleIssue signs a leaf for the service named in the path, for the
// bearer of that service's enrolment token only: what a service holds
// yields its own identity and no other.
func (a *App) handleIssue(w http.ResponseWriter, r *http.Request) error {
	svc := r.PathValue("service")
	if svc == catalog.MeshService {
		a.logger.Warn("mesh: refused a request for the controller's own identity", "remote", r.RemoteAddr)
		return service.Errorf(http.StatusForbidden, service.CodeForbidden, "the mesh controller's identity is issued in-process only")
	}
	if _, ok := catalog.Lookup(svc); !ok {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no Lucid service %q (services: %s)", svc, strings.Join(catalog.Names(), ", "))
	}
	if !a.enrolled(r, svc) {
		// Never the presented value: it may be another service's token.
		_, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		a.logger.Warn("mesh: refused a certificate request without the service's enrolment token", "service", svc, "credential_presented", bearer, "remote", r.RemoteAddr)
		a.metrics.enrolRefused.WithLabelValues(svc).Inc()
		return errEnrolment
	}
	// Each service its own budget: one service (compromised, or in a
	// loop) cannot spend the others' and leave them without leaves.
	d, err := a.limiter.Allow(r.Context(), "sign/"+svc, ratelimit.Limit{Limit: a.signRate, Period: time.Second, Burst: a.signRate}, time.Now())
	if err != nil {
		return err
	}
	if !d.Allowed {
		a.metrics.refused.Inc()
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((d.RetryAfter+time.Second-1)/time.Second))))
		return service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit, "certificate signing is rate-limited; retry shortly")
	}
	var req meshapi.IssueRequest
	if err := service.DecodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	csr, err := meshca.ParseCSR([]byte(req.CSR))
	if err != nil {
		return &service.HTTPError{Status: http.StatusBadRequest, Code: service.CodeBadRequest, Message: err.Error()}
	}
	leaf, err := a.ca.Sign(r.Context(), csr, svc)
	if bad := (*meshca.RequestError)(nil); errors.As(err, &bad) {
		return &service.HTTPError{Status: http.StatusBadRequest, Code: service.CodeBadRequest, Message: bad.Reason}
	} else if err != nil {
		return err // a 500; the detail goes to the log only
	}
	a.metrics.issued.WithLabelValues(svc).Inc()
	a.logger.Debug("leaf issued", "service", svc, "serial", leaf.Chain[0].SerialNumber.Text(16), "not_after", leaf.NotAfter)
	service.WriteJSON(w, http.StatusOK, meshapi.Issued{
		CertificateChain: string(leaf.ChainPEM()),
		CABundle:         string(meshca.EncodeCerts(a.ca.Bundle())),
		NotAfter:         leaf.NotAfter,
		SPIFFEID:         meshca.SPIFFEID(svc).String(),
	})
	return nil
}

func (a *App) handleRotate(w http.ResponseWriter, r *http.Request) error {
	if a.seed != nil {
		return errSeeded
	}
	if err := a.ca.Rotate(r.Context()); err != nil {
		if busy := (*meshca.RotationInProgressError)(nil); errors.As(err, &busy) {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "%v", err)
		}
		return err
	}
	fp := a.ca.Fingerprint()
	a.logger.Info("mesh root rotated; the old root stays trusted until its leaves expire", "root_sha256", fp)
	service.WriteJSON(w, http.StatusOK, meshapi.Rotated{Fingerprint: fp})
	return nil
}

func isPending(err error) bool {
	var p *pendingError
	return errors.As(err, &p)
}

// registryError maps registrar errors to answers: Consul missing or down is
// 503, the detail stays in the log.
func registryError(err error) error {
	if errors.Is(err, errNoConsul) {
		return service.Errorf(http.StatusServiceUnavailable, service.CodeUnready, "%v", err)
	}
	return &service.HTTPError{Status: http.StatusServiceUnavailable, Code: service.CodeUnready, Message: "consul is unreachable", Cause: err}
}

func (a *App) handleServices(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if name != "" {
		// PathValue is decoded: "..%2F..%2Fagent%2Fself" would reach
		// Consul, with the controller's management token, as a path of
		// its own choosing.
		if err := meshca.ValidServiceName(name); err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "%v", err)
		}
	}
	in, err := a.reg.instances(r.Context(), name)
	if err != nil {
		return registryError(err)
	}
	if name != "" && len(in) == 0 {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no instance of %q is registered", name)
	}
	service.WriteJSON(w, http.StatusOK, map[string]any{"instances": in})
	return nil
}

func (a *App) handleRegister(w http.ResponseWriter, r *http.Request) error {
	var reg meshapi.Registration
	if err := service.DecodeJSON(w, r, 64<<10, &reg); err != nil {
		return err
	}
	if err := validateRegistration(&reg); err != nil {
		return err
	}
	status := http.StatusCreated
	if err := a.reg.register(r.Context(), reg); isPending(err) {
		a.logger.Warn("outside service saved; consul will get it on the next sync", "id", reg.ID, "error", err)
		status = http.StatusAccepted
	} else if refused := (*refusedError)(nil); errors.As(err, &refused) {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "%v", refused)
	} else if err != nil {
		return registryError(err)
	}
	a.logger.Info("outside service registered", "id", reg.ID, "service", reg.Name)
	service.WriteJSON(w, status, reg)
	return nil
}

var (
	registrationID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	metaKey        = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
)

// checkMeta applies Consul's own limits on service metadata, so a
// registration it would refuse is refused here with a reason, and the keys
// the controller sets itself are not taken.
func checkMeta(meta map[string]string) []string {
	var problems []string
	if len(meta) > 62 { // Consul allows 64; the controller adds two
		problems = append(problems, fmt.Sprintf("meta: %d keys, at most 62", len(meta)))
	}
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		switch {
		case !metaKey.MatchString(k) || strings.HasPrefix(k, "consul-"):
			problems = append(problems, fmt.Sprintf("meta: key %q: letters, digits, dashes and underscores only, at most 128, not starting with consul-", k))
		case k == "managed_by" || k == "external":
			problems = append(problems, fmt.Sprintf("meta: key %q is the controller's own", k))
		case len(meta[k]) > 512:
			problems = append(problems, fmt.Sprintf("meta: value of %q is %d bytes, at most 512", k, len(meta[k])))
		}
	}
	return problems
}

var hostName = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$`)

// validAddress reports whether address is an IP address or a host name.
func validAddress(address string) bool {
	if _, err := netip.ParseAddr(address); err == nil {
		return true
	}
	return len(address) <= 253 && hostName.MatchString(address)
}

// checkTarget says why a check URL does not point at the registered
// address and port, or nil. Consul fetches the URL from its own network
// position, so a check elsewhere would make it probe whatever the
// registrant names (a metadata service, Consul's own API); on the
// service's own address and port it probes only what was registered.
func checkTarget(raw, address string, port int) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return errors.New("must be an http(s) URL")
	}
	if u.User != nil {
		return errors.New("must carry no user name or password")
	}
	p := u.Port()
	if p == "" {
		p = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if !strings.EqualFold(u.Hostname(), address) || p != strconv.Itoa(port) {
		return fmt.Errorf("must point at the registered address and port, %s", net.JoinHostPort(address, strconv.Itoa(port)))
	}
	return nil
}

// validateRegistration checks an outside registration and fills defaults.
func validateRegistration(reg *meshapi.Registration) error {
	var problems []string
	if err := meshca.ValidServiceName(reg.Name); err != nil {
		problems = append(problems, "name: "+err.Error())
	} else if _, ok := catalog.Lookup(reg.Name); ok {
		return service.Errorf(http.StatusConflict, service.CodeConflict, "%q is a stack service; the controller registers it itself", reg.Name)
	}
	if !validAddress(reg.Address) {
		problems = append(problems, "address: a host name or IP address is required")
	}
	if reg.Port < 1 || reg.Port > 65535 {
		problems = append(problems, "port: must be 1 to 65535")
	}
	if reg.Check != "" {
		if err := checkTarget(reg.Check, reg.Address, reg.Port); err != nil {
			problems = append(problems, "check: "+err.Error())
		}
		if reg.Interval == "" {
			reg.Interval = "10s"
		}
		if d, err := time.ParseDuration(reg.Interval); err != nil || d < 100*time.Millisecond {
			problems = append(problems, "interval: must be a duration of at least 100ms")
		}
	}
	problems = append(problems, checkMeta(reg.Meta)...)
	if reg.ID == "" {
		reg.ID = fmt.Sprintf("%s-%s-%d", reg.Name, strings.ReplaceAll(reg.Address, ":", "-"), reg.Port)
	}
	// IDs go into Consul's API paths and must not take over the stack's.
	if !registrationID.MatchString(reg.ID) || strings.HasPrefix(reg.ID, "lucid-") {
		problems = append(problems, "id: letters, digits, dots, dashes and underscores only, not starting with lucid-")
	}
	if len(problems) > 0 {
		return &service.HTTPError{Status: http.StatusBadRequest, Code: service.CodeBadRequest, Message: "invalid registration", Fields: problems}
	}
	return nil
}

func (a *App) handleDeregister(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if _, ok := catalog.Lookup(name); ok {
		return service.Errorf(http.StatusConflict, service.CodeConflict, "%q is a stack service; the controller keeps it registered while it runs", name)
	}
	n, err := a.reg.deregister(r.Context(), name)
	status := http.StatusNoContent
	if isPending(err) {
		a.logger.Warn("outside service forgotten; consul will drop it on the next sync", "service", name, "error", err)
		status = http.StatusAccepted
	} else if err != nil {
		return registryError(err)
	}
	if n == 0 {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no outside service %q is registered", name)
	}
	a.logger.Info("outside service deregistered", "service", name, "instances", n)
	w.WriteHeader(status)
	return nil
}

func (a *App) handleEnvoy(w http.ResponseWriter, r *http.Request) error {
	svc := r.PathValue("service")
	s, ok := catalog.Lookup(svc)
	if !ok {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no Lucid service %q", svc)
	}
	body, err := envoyBootstrap(s, envoyOptionsFrom(r.URL.Query()))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/yaml")
	_, err = w.Write(body)
	return err
}
