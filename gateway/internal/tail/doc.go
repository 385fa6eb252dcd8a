// Package tail holds the tail of the log in a gateway's memory: the newest messages it has
// dispatched, as the entries live delivery already made (the encoded frames that every
// recipient shares), bounded by bytes and age, so that a client that resumes from an offset
// inside it, or asks for a channel's recent history, is served from memory at no cost per
// client beyond a pointer per message.
//
// # One appender, many readers
//
// A Log has one appender: Append, Reset and Trim are called from one goroutine at a time
// (the hub's dispatch, under the hub's lock, so that what the tail holds is ordered against
// live fan-out: see "Hand-over" below). Readers (Read, Reader.Next, History, Edge, Newest,
// Stats) may run on any number of goroutines at once, at their own pace, and never block
// the appender: they take no lock the appender takes. Entries are immutable once appended;
// a reader gets a pointer to the entry the appender made, never a copy.
//
// # The edge
//
// Offsets increase but may skip numbers (a RabbitMQ stream gives offsets to its own
// bookkeeping; a control message has an offset but is never held), so the tail never counts
// offsets. It records instead the exact offset after which it is complete, its edge: every
// message dispatched with a greater offset is held (or was a control message, which no
// reader is given). The edge is set by Reset (at start, from where the consumer attached;
// after a gap in what was dispatched) and moved on by eviction: evicting the entry at
// offset o sets the edge to o. Read(since) with since below the edge answers ErrNotHeld:
// the caller reads the bus's log (the stream) instead, never a tail with a hole in it.
// Before the first Reset the edge is unknown and nothing is served.
//
// # Readers fall off the start
//
// A Reader remembers its place, not a pointer into the tail; the appender evicts what is
// older than the bounds whatever the readers are doing. A Reader whose next entry was
// evicted before it got there answers ErrFellBehind from Next, with Through telling how far
// it got; its caller goes on from there elsewhere (the stream), or resets its client.
//
// # Memory
//
// The bytes counted are each held entry's Size (what the caller says its value holds) plus
// EntryOverhead. Entries are allocated in blocks of blockEntries; a block's evicted entries
// (and the values they point to) are freed with the block, once all of it is evicted and
// no reader holds one of its entries: at most blockEntries-1 evicted entries stay reachable
// beyond the bounds.
//
// # Where it lives, and the embedded bus
//
// The package is internal to the gateway: the gateway appends the frames it encodes for
// live delivery, and nothing below the gateway needs them. On the embedded bus the tail is
// the whole retained log: the bus keeps no history of its own (only the queue between a
// publish and its dispatch), the gateway, which dispatches every offset from 0, makes its
// tail complete after -1 at start, and the tail's bounds are the bus's retention. A since
// below the edge there has nothing to read from and resets, as a since older than the
// embedded ring does today. So the embedded bus's ring buffer becomes this structure, held
// once, as the encoded frames every replay and history needs, instead of a second copy of
// every message as the bus received it.
//
// # Hand-over to live delivery (how the gateway uses it)
//
// The gateway appends every dispatched message under the hub's lock, in the same critical
// section as its fan-out. A resuming client reads the tail with its own Reader, at its own
// pace, without that lock. When Next reports the end (a nil entry), Through is the offset
// through which the client has everything; the gateway then takes the hub's lock and joins
// the client to live delivery only if Newest() is still Through (nothing was appended in
// between; else it goes on reading). Under that lock nothing is appended or fanned out, so
// every message at or below Through came from the tail and every later one will come live:
// no gap, no duplicate. A since above Newest (a client from a gateway that was ahead) reads
// nothing and its Through is since; live delivery then skips offsets through since.
package tail
