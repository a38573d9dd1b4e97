package cnm_test

import "time"

const (
	leakWait  = 10 * time.Second
	pollEvery = 20 * time.Millisecond
)
