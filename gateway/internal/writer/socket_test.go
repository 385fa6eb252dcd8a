package writer

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
)

// loopback returns the server's side of a loopback TCP connection and the client's side,
// which reads nothing until the test reads it. With buf > 0, both sides' kernel buffers
// (the server's send buffer, the client's receive buffer) are that small; else the
// kernel's.
func loopback(t testing.TB, buf int) (*net.TCPConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	var d net.Dialer
	if buf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, buf) })
		}
	}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	sc := (<-accepted).(*net.TCPConn)
	t.Cleanup(func() { sc.Close() })
	if buf > 0 {
		_ = sc.SetWriteBuffer(buf)
	}
	return sc, client
}

// socketPair returns the server's side of a loopback TCP connection as a Socket with
// raw access and a small send buffer, and the client's side, which reads nothing until
// the test reads it.
func socketPair(t testing.TB) (*Socket, net.Conn) {
	t.Helper()
	sc, client := loopback(t, 4096)
	bc := &Socket{}
	bc.Init(sc, 10*time.Second)
	if !bc.Direct() {
		t.Skip("no non-blocking writes on this platform")
	}
	return bc, client
}

// TestPartialWriteKeepsFramesWhole: a tryWrite that the socket takes only part of keeps
// the rest, which goes out before anything else: a control frame the library writes
// meanwhile (a pong) comes after the data frame, not inside it, and a rest that begins
// with the byte a close frame begins with (0x88, common in compressed or non-ASCII text)
// is not taken for a close frame.
func TestPartialWriteKeepsFramesWhole(t *testing.T) {
	bc, client := socketPair(t)
	data := wire.NewFrame(bytes.Repeat([]byte{0x88}, 1<<20), -1, time.Time{})
	n, err := bc.TryWrite(data.Wire)
	if err != nil || n == 0 || n >= len(data.Wire) {
		t.Fatalf("tryWrite of %d bytes to a socket that reads nothing: wrote %d, %v; want a part", len(data.Wire), n, err)
	}
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(client); got <- b }()
	pong := []byte{0x8a, 0x00}
	if _, err := bc.Write(pong); err != nil { // the read pump answering a ping
		t.Fatal(err)
	}
	if err := bc.Flush(); err != nil { // what writeLoop does after a partial turn
		t.Fatal(err)
	}
	next := wire.NewFrame([]byte(`{"op":"message"}`), -1, time.Time{})
	if n, err := bc.TryWrite(next.Wire); err != nil || n != len(next.Wire) {
		t.Fatalf("the next frame: wrote %d of %d, %v", n, len(next.Wire), err)
	}
	_ = bc.Conn.(*net.TCPConn).CloseWrite()
	want := append(append(append([]byte(nil), data.Wire...), pong...), next.Wire...)
	if b := <-got; !bytes.Equal(b, want) {
		i := 0
		for i < min(len(b), len(want)) && b[i] == want[i] {
			i++
		}
		t.Errorf("the client read %d bytes, want %d: they differ from byte %d (the partial write ended at %d)", len(b), len(want), i, n)
	}
}

// TestTryWriteWaitsForWhatIsPending: while a partial write's rest is pending, tryWrite
// writes nothing new (it keeps it, after the rest).
func TestTryWriteWaitsForWhatIsPending(t *testing.T) {
	bc, client := socketPair(t)
	big := wire.NewFrame(bytes.Repeat([]byte{'a'}, 1<<20), -1, time.Time{})
	if n, _ := bc.TryWrite(big.Wire); n >= len(big.Wire) {
		t.Fatal("the socket took 1 MiB at once")
	}
	small := wire.NewFrame([]byte("b"), -1, time.Time{})
	if n, err := bc.TryWrite(small.Wire); n != 0 || err != nil {
		t.Fatalf("tryWrite with a rest pending: wrote %d, %v; want 0, kept", n, err)
	}
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(client); got <- b }()
	if err := bc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = bc.Conn.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, append(append([]byte(nil), big.Wire...), small.Wire...)) {
		t.Errorf("the client read %d bytes, want the big frame then the small one (%d)", len(b), len(big.Wire)+len(small.Wire))
	}
}

// TestTryWriteAfterCloseWritesNowhere: once a connection is closed, its descriptor's
// number may belong to another client's socket at once. A writer worker's tryWrite that
// comes after the close must fail, not write to that socket.
func TestTryWriteAfterCloseWritesNowhere(t *testing.T) {
	bc, _ := socketPair(t)
	other, peer := socketPair(t)
	fd := bc.fd
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	// The number now names the other connection's socket, as after an accept.
	if err := syscall.Dup2(other.fd, fd); err != nil {
		t.Fatal(err)
	}
	frame := wire.NewFrame([]byte(`{"op":"message","data":"for the closed connection"}`), -1, time.Time{})
	n, err := bc.TryWrite(frame.Wire)
	if err == nil || n != 0 {
		t.Fatalf("tryWrite after Close: wrote %d, %v; want an error", n, err)
	}
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("tryWrite after Close: %v, want net.ErrClosed", err)
	}
	_ = other.Close()
	_ = syscall.Close(fd)
	if b, _ := io.ReadAll(peer); len(b) > 0 {
		t.Errorf("the socket that took the closed one's number read %q", b)
	}
}
