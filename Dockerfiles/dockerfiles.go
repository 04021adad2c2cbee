// Package dockerfiles holds the Dockerfile that `lucidctl build --builder
// docker` sends to the Docker Engine, embedded so the binary carries it.
package dockerfiles

import _ "embed"

// Dockerfile builds all six images, one --target per service.
//
//go:embed Dockerfile
var Dockerfile []byte
