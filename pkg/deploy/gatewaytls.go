package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// GatewayCertMetric is the gateway's gauge of each certificate it serves:
// the Unix time of its NotAfter, labelled with its name.
const GatewayCertMetric = "lucid_gateway_tls_certificate_expiry_timestamp_seconds"

// GatewayCertWarnDays is how many days before its expiry a gateway
// certificate is warned about: ACME renews at a third of a 90-day
// lifetime (30 days), so fewer than 14 means renewals keep failing, and an
// operator's own certificate wants replacing.
const GatewayCertWarnDays = 14

// GatewayTLS is the gateway's public certificates, as its metrics report
// them.
type GatewayTLS struct {
	// Certificates, the soonest to expire first.
	Certificates []GatewayCertificate `json:"certificates"`
	// NotAfter and DaysLeft are the soonest expiry's.
	NotAfter time.Time `json:"not_after"`
	DaysLeft int       `json:"days_left"`
	// ExpiresSoon is fewer than GatewayCertWarnDays days left.
	ExpiresSoon bool `json:"expires_soon"`
}

// GatewayCertificate is one certificate the gateway serves.
type GatewayCertificate struct {
	// Name is its first DNS name, else its subject's common name.
	Name     string    `json:"name"`
	NotAfter time.Time `json:"not_after"`
	// DaysLeft is whole days until NotAfter (negative once expired).
	DaysLeft int `json:"days_left"`
}

// ParseGatewayTLS reads the gateway's certificates from its /metrics
// (Prometheus text format); nil when it serves none (plain HTTP).
func ParseGatewayTLS(metrics []byte, now time.Time) (*GatewayTLS, error) {
	var certs []GatewayCertificate
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, GatewayCertMetric)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		name := ""
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				return nil, fmt.Errorf("gateway /metrics: a %s line without its labels' end", GatewayCertMetric)
			}
			name = labelValue(rest[1:end], "name")
			rest = rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("gateway /metrics: %s{name=%q} is %q, not a time", GatewayCertMetric, name, f[0])
		}
		na := time.Unix(int64(v), 0).UTC()
		certs = append(certs, GatewayCertificate{Name: name, NotAfter: na, DaysLeft: daysLeft(na, now)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("gateway /metrics: %w", err)
	}
	if len(certs) == 0 {
		return nil, nil
	}
	slices.SortStableFunc(certs, func(a, b GatewayCertificate) int { return a.NotAfter.Compare(b.NotAfter) })
	first := certs[0]
	return &GatewayTLS{Certificates: certs, NotAfter: first.NotAfter, DaysLeft: first.DaysLeft, ExpiresSoon: first.DaysLeft < GatewayCertWarnDays}, nil
}

// daysLeft is whole days from now to t, rounded towards the past (an
// expired certificate has a negative count).
func daysLeft(t, now time.Time) int {
	return int(math.Floor(t.Sub(now).Hours() / 24))
}

// labelValue finds label's value in a Prometheus label list
// (a="x",b="y"), unescaped.
func labelValue(labels, label string) string {
	for labels != "" {
		k, rest, ok := strings.Cut(labels, "=")
		if !ok || rest == "" || rest[0] != '"' {
			return ""
		}
		var val strings.Builder
		i := 1
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(rest[i])
				}
				continue
			}
			val.WriteByte(rest[i])
		}
		if strings.TrimSpace(k) == label {
			return val.String()
		}
		labels = strings.TrimPrefix(strings.TrimSpace(rest[min(i+1, len(rest)):]), ",")
	}
	return ""
}
