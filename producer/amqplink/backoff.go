package amqplink

import (
	"math/rand/v2"
	"time"
)

// Backoff returns the wait before round n (from 0) of reconnect attempts: drawn
// uniformly from [0, min(hi, lo·2ⁿ)], exponential backoff with full jitter. The first
// round after a loss comes within lo, and links that lost the same node at the same
// moment spread out instead of reconnecting in lockstep. It is the one backoff of every
// link.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	if lo <= 0 || hi <= 0 {
		return 0
	}
	ceil := hi
	if n < 62 {
		if d := lo << n; d > 0 && d>>n == lo && d < ceil {
			ceil = d
		}
	}
	return rand.N(ceil + 1)
}
