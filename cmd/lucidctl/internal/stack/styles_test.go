package stack

import "github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"

func testStyles() *iostreams.Styles {
	s, _, _, _ := iostreams.Test()
	return s.OutStyles()
}
