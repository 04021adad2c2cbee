// Package templates holds the compose and env templates that
// `lucidctl render` fills in, embedded so the binary carries them.
package templates

import "embed"

// FS holds docker-compose.core.yml.tmpl and env.core.tmpl.
//
//go:embed docker-compose.core.yml.tmpl env.core.tmpl
var FS embed.FS
