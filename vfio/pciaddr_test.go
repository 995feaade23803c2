package vfio

import (
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	good := map[string]string{
		"0000:01:00.0": "0000:01:00.0",
		"01:00.1":      "0000:01:00.1",
		"0000:AF:1f.7": "0000:af:1f.7",
		"1:2:3.4":      "0001:02:03.4",
		"ffff:ff:1f.7": "ffff:ff:1f.7",
	}
	for in, want := range good {
		got, err := NormalizeAddress(in)
		if err != nil || got != want {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":              "wrong number",
		"0000:01:00":    "no '.'",
		"0000:01:20.0":  "device",   // device is 5 bits
		"0000:01:00.8":  "function", // function is 3 bits
		"0000:100:00.0": "bus",
		"00000:01:00.0": "domain",
		"0000:0g:00.0":  "bus",
		"a:b:c:d.0":     "wrong number",
		"0000:01:00.":   "function",
	}
	for in, frag := range bad {
		_, err := ParseAddress(in)
		if err == nil {
			t.Errorf("ParseAddress(%q) succeeded, want error", in)
			continue
		}
		if !strings.Contains(err.Error(), frag) || !strings.Contains(err.Error(), "0000:01:00.0") {
			t.Errorf("ParseAddress(%q) error %q should mention %q and show the expected form", in, err, frag)
		}
	}
}
