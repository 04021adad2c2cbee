package service

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// httpMetrics counts requests and their latency per route. The route label
// is the ServeMux pattern, never the raw path, so its cardinality is bounded.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
	// byRoute caches each label set's counter and histogram (observerKey
	// to *routeObservers): every request is observed, and a lock-free load
	// is cheaper than resolving the labels again.
	byRoute sync.Map
}

type observerKey struct {
	route, method string
	code          int
}

type routeObservers struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_http_requests_total",
			Help: "HTTP requests served, by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lucid_http_request_duration_seconds",
			Help:    "HTTP request latency, by route and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lucid_http_requests_in_flight",
			Help: "HTTP requests being served.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.inflight)
	return m
}

// newRegistry returns a registry with the Go runtime and process collectors.
func newRegistry(info map[string]string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "lucid_build_info",
			Help:        "Build of the running service; always 1.",
			ConstLabels: info,
		}, func() float64 { return 1 }),
	)
	return reg
}

// route is the metrics label for r once the mux has matched it.
func route(r *http.Request) string {
	if r.Pattern == "" {
		return "unmatched"
	}
	return r.Pattern
}

// methodLabels are the methods that get a label of their own.
var methodLabels = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// methodLabel keeps the method label bounded against made-up methods. It
// returns its own string, never m: behind the gateway's fasthttp adaptor a
// request's Method shares the connection's buffer, which the next request
// overwrites, and a label kept by the metrics would change under them (two
// series with the same labels fail every scrape).
func methodLabel(m string) string {
	for _, l := range methodLabels {
		if m == l {
			return l
		}
	}
	return "OTHER"
}

func (m *httpMetrics) observe(r *http.Request, status int, elapsed time.Duration) {
	m.observeRoute(route(r), r.Method, status, elapsed)
}

func (m *httpMetrics) observeRoute(route, method string, status int, elapsed time.Duration) {
	k := observerKey{route, methodLabel(method), status}
	v, ok := m.byRoute.Load(k)
	if !ok {
		v, _ = m.byRoute.LoadOrStore(k, &routeObservers{
			requests: m.requests.WithLabelValues(k.route, k.method, strconv.Itoa(status)),
			duration: m.duration.WithLabelValues(k.route, k.method),
		})
	}
	o := v.(*routeObservers)
	o.requests.Inc()
	o.duration.Observe(elapsed.Seconds())
}
