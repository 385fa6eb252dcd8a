package consumer

import "time"

// logSampleEvery is how often a logSampler lets a line through after the first.
const logSampleEvery = 10 * time.Second

// logSampler thins out a kind of log line that a publisher can cause at any rate (a
// flood of deliveries with a bad header): it lets the first line through, then at most
// one every logSampleEvery, and counts the lines it held back in between, so the log
// stays bounded while the counters count every one. Its zero value is ready; it is owned
// by one goroutine.
type logSampler struct {
	next time.Time // when the next line may go
	held int       // lines held back since the last one let through
}

// allow reports whether a line may be logged now and, when it may, how many were held
// back since the last one.
func (l *logSampler) allow() (ok bool, held int) {
	now := time.Now()
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	held, l.held = l.held, 0
	l.next = now.Add(logSampleEvery)
	return true, held
}
