package service

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond}
	var got []time.Duration
	for range 4 {
		got = append(got, b.Delay())
		if !b.Wait(context.Background()) {
			t.Fatal("Wait returned false")
		}
	}
	want := []time.Duration{1, 2, 4, 4}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays = %v", got)
		}
	}
	b.Reset()
	if b.Delay() != time.Millisecond {
		t.Errorf("after Reset: %s", b.Delay())
	}
	b.AtLeast(time.Hour)
	if b.Delay() != 4*time.Millisecond {
		t.Errorf("AtLeast is not capped: %s", b.Delay())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b.Wait(ctx) {
		t.Error("Wait on an ended context returned true")
	}
}
