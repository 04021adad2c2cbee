// Package service is the plumbing every `lucid <service>` shares: its base
// configuration from the environment, JSON logs that carry request IDs,
// `GET /health`, `GET /ready` and `GET /metrics`, panic recovery, server
// timeouts, graceful shutdown, and the `healthcheck` probe that container
// images use instead of curl.
//
// A service's life is explicit: LoadConfig validates, New provisions, the
// service adds its routes and readiness checks, Run serves until the context
// ends and then drains within the configured deadline.
package service
