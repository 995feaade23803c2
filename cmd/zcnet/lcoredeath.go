package main

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/pollmode"
)

// logLcoreDeath logs a crashed lcore at once and returns the error the
// command exits with. zcnet does not limp on with part of its data path
// dead: like a DPDK application whose lcore crashed, it stops.
func logLcoreDeath(log *zap.Logger, err error) error {
	fields := []zap.Field{zap.Error(err)}
	var pe *pollmode.TaskPanicError
	if errors.As(err, &pe) {
		fields = append(fields, zap.String("task", pe.Task), zap.Int("lcore", pe.Lcore), zap.ByteString("stack", pe.Stack))
	}
	log.Error("an lcore crashed and its ports stopped moving traffic; shutting down", fields...)
	return fmt.Errorf("data path stopped: %w (a bug in zcnet: report it with the stack logged above)", err)
}
