package main

import (
	"bytes"
	"strings"
	"testing"
)

func execute(args ...string) (string, error) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestVersion(t *testing.T) {
	out, err := execute("version")
	if err != nil || !strings.HasPrefix(out, "zcnet "+version+" (commit ") {
		t.Errorf("version: %q, %v", out, err)
	}
}

func TestCommandErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud", "version"}, "want debug, info, warn or error"},
		{[]string{"bind", "--dry-run", "03:00"}, "invalid PCI address"},
		{[]string{"unbind", "--dry-run", "0000:ff:1f.7"}, "not found"},
		{[]string{"bind"}, "requires at least 1 arg"},
		{[]string{"probe", "extra"}, "unknown command"},
	}
	for _, c := range cases {
		_, err := execute(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
