package cnm_test

import "time"

const (
	leakWait  = 5 * time.Second
	pollEvery = 20 * time.Millisecond
)
