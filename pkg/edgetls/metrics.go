package edgetls

import (
	"crypto/x509"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// expiryCollector reports the certificates in use at each scrape, so the gauge never lags a renewal or a reload.
type expiryCollector struct {
	e    *Edge
	desc *prometheus.Desc
}

var _ prometheus.Collector = (*expiryCollector)(nil)

func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	latest := map[string]*x509.Certificate{} // one series per name: the latest certificate for it
	for _, leaf := range c.e.leaves() {
		name := certName(leaf)
		if old, ok := latest[name]; !ok || leaf.NotAfter.After(old.NotAfter) {
			latest[name] = leaf
		}
	}
	for name, leaf := range latest {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()), name)
	}
}

// register adds the edge's two metrics to reg (nil: none).
func (e *Edge) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	expiry := &expiryCollector{e: e, desc: prometheus.NewDesc(
		"lucid_gateway_tls_certificate_expiry_timestamp_seconds",
		"Unix time of the NotAfter of each certificate the gateway serves, by its first DNS name (else subject CN).",
		[]string{"name"}, nil)}
	for _, c := range []prometheus.Collector{expiry, e.renewals} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("edge TLS metrics: %w", err)
		}
		e.registered = append(e.registered, c)
	}
	return nil
}
