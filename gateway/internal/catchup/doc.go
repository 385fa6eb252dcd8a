// Package catchup serves deep resumes: clients whose since is older than what the gateway
// holds in memory (the tail) and must be caught up from the bus's log (the stream). Resumes
// whose since are close share one reader of the log, the number of readers at once is
// bounded, and a resume that finds every reader busy waits its turn, first come, first
// served, counted, with a log line when one waits longer than a second.
//
// # Groups
//
// A reader of the log serves a group of members. When a reader is free, the member that
// has waited longest starts a group, with every waiting member whose since is within
// Window offsets of its own; the reader starts after the lowest since. Each member skips
// what is at or below its own since. A member that arrives (or waits) while a reader runs
// joins that group at once if the group still holds everything after its since and its
// since is at most Window above where the reader is: so a storm of clients that left one
// gateway at the same moment, with sinces a few messages apart, is read from the log once.
//
// Window (default 5,000 offsets) bounds what a member waits for that it does not need: a
// member whose since is W above the group's start waits while the reader reads W messages
// for the others. One read of a RabbitMQ stream gives 22,000 to 26,000 messages a second
// on the 2-core machine of the benchmarks, so that is at most about a fifth of a second,
// against a read of its own that would cost the broker as much again; and the sinces of a
// storm (clients that left one gateway at once) are a few hundred offsets apart at most.
// Offsets may skip numbers, so W is a distance, never a count of messages.
//
// # Pace: the fastest member leads, a slow one falls off
//
// What a reader reads goes into a buffer shared by its members (a tail.Log bounded by
// BufferBytes), and each member reads the buffer with its own cursor, at its own pace, on
// its own goroutine (the caller's: its write queue says when it can take more). The reader
// reads ahead while the buffer is less than half full, and beyond that only while the
// fastest member is in the newer half. So the group goes at the pace of its fastest
// member, and a member that falls a buffer's length behind it falls off the start: it
// leaves the group, keeping its position, and is handed over to memory if the tail holds
// its position, or waits again (with its place in the line: its first arrival) for a
// reader of its own or another group. A slow member so costs the others nothing, and no
// member is held in a group it cannot follow.
//
// A group that has read for Slice (default 10 s) while others wait ends: its members wait
// again, behind those that were waiting, so one group of clients that read slower than
// the messages come cannot keep a reader from everyone else.
//
// # The end: hand-over to memory
//
// After each message it reads, a reader asks Config.Edge where memory takes over (in the
// gateway: an offset a little inside the tail, tail.Log.Inside, so that eviction does not
// pass a member while it hands over). Once it has read that far it stops, and each member,
// when it has read the buffer to its end, gets ErrCaughtUp, with Position the offset
// through which it has been given everything. The caller then joins the client to live
// delivery with no gap and no duplicate, in two steps:
//
//  1. It reads the tail after Position (tail.Log.Read) to the tail's end, at the client's
//     pace. If the tail no longer holds Position (ErrNotHeld; the edge passed it in
//     between) or the reader falls behind, the client resumes here again from how far it
//     got: a new Resume.
//  2. At the tail's end (Next gives nil, Through is the offset through which the client
//     has everything), it takes the hub's lock, under which live fan-out dispatches and
//     appends to the tail. If the tail's Newest is still Through, it joins the client
//     there (live delivery skips offsets at or below Through) and queues `resumed`; if
//     not, a message came in between: it reads on (step 2 again).
//
// No gap: the log gave every message up to Position, the tail (complete after its edge,
// which was at or below Position when the tail was read) every one from Position to
// Through, and live delivery every one after Through, since the client joined before any
// was fanned out. No duplicate: each step starts strictly after where the one before
// ended, and live fan-out to the client starts under the lock at Through. The race with
// live delivery is only in step 2, and the lock settles it: a message dispatched after the
// tail was read to its end is either in the tail before the lock is taken (the check
// fails, the client reads it from the tail) or dispatched after the client joined (live).
// The log and live delivery never race for a member: a member reads only the log until
// Position, and only memory after.
//
// # Reset
//
// Where the log no longer holds what a member needs (its since, or the position of a
// reader, is below the log's oldest retained offset: retention cut it, before or while it
// was read), the member gets ErrReset: its client reloads its state, then joins live.
// A reader that fails (the broker went away) makes its members wait again once; a second
// failure for the same member is ErrReset too.
//
// # Concurrency
//
// A Pool is safe for concurrent use. A Member is read by one goroutine (the one that calls
// Next); Close may be called from any goroutine. The hooks may be called with the pool's
// lock held (all but ReadFailed are): they must be quick and must not call the pool.
package catchup
