package vhost_test

import (
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/vhost"
)

// refusalLog records the reasons a device logs for the requests it
// refuses (at warning level, as "vhost-user request refused" and the
// like), so that a test can tell which check refused a request rather
// than accept any refusal.
type refusalLog struct{ logs *observer.ObservedLogs }

// withRefusalLog sets cfg's logger to one whose refusals l records.
func withRefusalLog(cfg vhost.Config) (vhost.Config, refusalLog) {
	core, logs := observer.New(zap.WarnLevel)
	cfg.Logger = zap.New(core)
	return cfg, refusalLog{logs}
}

// refused checks that err is a refusal and that the reason the device
// logged last (since the previous check) mentions want.
func (l refusalLog) refused(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a refusal mentioning %q", want)
	}
	var msgs []string
	for _, e := range l.logs.TakeAll() {
		msgs = append(msgs, fmt.Sprint(e.ContextMap()["error"]))
	}
	if len(msgs) == 0 || !strings.Contains(msgs[len(msgs)-1], want) {
		t.Fatalf("refusal logged as %q, want it to mention %q", msgs, want)
	}
}
