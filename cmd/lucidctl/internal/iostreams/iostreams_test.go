package iostreams

import (
	"strings"
	"testing"
)

func TestColorRules(t *testing.T) {
	s, _, _, _ := Test()
	if s.ColorOut() || s.ColorErr() {
		t.Error("color without a terminal")
	}
	s.SetTTY(true, false)
	if !s.ColorOut() || s.ColorErr() {
		t.Error("color must follow each stream's own terminal state")
	}
	if got := s.OutStyles().Error.Render("x"); !strings.Contains(got, "\x1b[") {
		t.Errorf("no escape codes on a terminal: %q", got)
	}
	s.DisableColor()
	if s.ColorOut() {
		t.Error("color after DisableColor")
	}
	if got := s.OutStyles().Error.Render("x"); got != "x" {
		t.Errorf("styled text without color = %q", got)
	}
}

func TestSystemHonoursNoColor(t *testing.T) {
	t.Setenv("NO_COLOR", "1")
	s := System()
	s.SetTTY(true, true)
	if s.ColorOut() || s.ColorErr() {
		t.Error("NO_COLOR ignored")
	}
}
