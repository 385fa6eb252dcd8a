package wsframe

import (
	"bytes"
	"testing"

	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

// frame builds a masked client frame: b0 (FIN, RSV bits, opcode), the length it claims
// (n < 0: len(payload)) and the payload.
func frame(b0 byte, n int64, payload []byte) []byte {
	if n < 0 {
		n = int64(len(payload))
	}
	out := append(gwtest.FrameHeader(b0, true, uint64(n)), 1, 2, 3, 4) // mask key
	return append(out, payload...)
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// The header bits, written out here as RFC 6455 section 5.2 gives them.
const (
	fin  = 0x80
	rsv1 = 0x40

	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// TestInspector feeds each stream whole and in chunks: each way gives the same outcome,
// and passes the bytes before the refused frame; in chunks, also the bytes of its
// header that came before the one that gave it away (never the whole header, so the
// library never acts on it).
func TestInspector(t *testing.T) {
	text := frame(fin|opText, -1, []byte("hello"))
	tests := []struct {
		name   string
		cfg    Config
		stream []byte
		pass   int // bytes passed; -1: all
		code   int // 0: no violation
	}{
		{"text, ping, pong, close", Config{}, cat(text, frame(fin|opPing, -1, []byte("p")), frame(fin|opPong, -1, nil), frame(fin|opClose, -1, []byte{3, 232})), -1, 0},
		{"fragments", Config{}, cat(frame(opText, -1, []byte("he")), frame(fin|opPing, -1, nil), frame(opContinuation, -1, []byte("l")), frame(fin|opContinuation, -1, []byte("lo"))), -1, 0},
		{"16- and 64-bit lengths", Config{}, cat(frame(fin|opBinary, -1, make([]byte, 300)), frame(fin|opText, 70000, make([]byte, 70000))), -1, 0},
		{"unmasked", Config{}, cat(text, []byte{fin | opText, 1, 'x'}), len(text), 1002},
		{"close with a 1-byte body", Config{}, cat(text, frame(fin|opClose, -1, []byte{3})), len(text), 1002},
		{"64-bit length, top bit set", Config{}, cat(text, []byte{fin | opText, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}), len(text), 1002},
		{"RSV1 without deflate", Config{}, frame(fin|rsv1|opText, -1, nil), 0, 1002},
		{"RSV2", Config{Deflate: true}, frame(fin|0x20|opText, -1, nil), 0, 1002},
		{"RSV1 on the first frame, deflate", Config{Deflate: true}, cat(frame(rsv1|opText, -1, []byte("a")), frame(fin|opContinuation, -1, []byte("b"))), -1, 0},
		{"RSV1 on a continuation, deflate", Config{Deflate: true}, cat(frame(rsv1|opText, -1, []byte("a")), frame(fin|rsv1|opContinuation, -1, []byte("b"))), 7, 1002},
		{"RSV1 on a ping, deflate", Config{Deflate: true}, frame(fin|rsv1|opPing, -1, nil), 0, 1002},
		{"reserved opcode", Config{}, frame(fin|0x3, -1, nil), 0, 1002},
		{"control frame of 126 bytes", Config{}, frame(fin|opPing, -1, make([]byte, 126)), 0, 1002},
		{"fragmented ping", Config{}, frame(opPing, -1, nil), 0, 1002},
		{"continuation first", Config{}, frame(fin|opContinuation, -1, nil), 0, 1002},
		{"text inside a message", Config{}, cat(frame(opText, -1, []byte("a")), frame(fin|opText, -1, nil)), 7, 1002},
		{"at the frame limit", Config{FrameRate: 1e-9, FrameBurst: 3}, cat(text, text, text), -1, 0},
		{"over the frame limit", Config{FrameRate: 1e-9, FrameBurst: 3}, cat(text, frame(fin|opPing, -1, nil), frame(fin|opPong, -1, nil), text), 3*len(text) - 10, 4029},
		{"empty continuations over the fragment cap", Config{MaxFragments: 3}, cat(frame(opText, -1, nil), frame(opContinuation, -1, nil), frame(opContinuation, -1, nil), frame(opContinuation, -1, nil)), 18, 1009},
		{"at the fragment cap", Config{MaxFragments: 3}, cat(frame(opText, -1, nil), frame(opContinuation, -1, nil), frame(fin|opContinuation, -1, nil), frame(opText, -1, nil)), -1, 0},
		{"not initialised: anything passes", Config{}, []byte{0xff, 0xff, 0xff}, -1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.pass
			if want < 0 {
				want = len(tt.stream)
			}
			for _, chunk := range []int{len(tt.stream), 1, 3} {
				var in Inspector
				if tt.code >= 0 {
					in.Init(tt.cfg)
				}
				passed, got := 0, 0
				for i := 0; i < len(tt.stream); i += chunk {
					n, v := in.Scan(tt.stream[i:min(i+chunk, len(tt.stream))])
					passed += n
					if v != nil {
						got = v.Code
						break
					}
				}
				if got != max(tt.code, 0) || passed < want || passed > want+9 || (chunk == len(tt.stream) && passed != want) {
					t.Errorf("in chunks of %d: passed %d bytes with close %d, want %d with close %d", chunk, passed, got, want, max(tt.code, 0))
				}
				if tt.code > 0 {
					if n, v := in.Scan([]byte{0x81}); n != 0 || v == nil || in.Failed() == nil {
						t.Error("after a violation, more bytes passed")
					}
				}
			}
		})
	}
}

func TestInMessage(t *testing.T) {
	var in Inspector
	in.Init(Config{})
	steps := []struct {
		frame []byte
		want  bool
	}{
		{frame(fin|opText, -1, []byte("a")), false},
		{frame(opText, -1, []byte("a")), true},
		{frame(fin|opPong, -1, nil), true},
		{frame(opContinuation, -1, nil), true},
		{frame(fin|opContinuation, -1, nil), false},
		{frame(fin|opPong, -1, nil), false},
	}
	for i, s := range steps {
		if _, v := in.Scan(s.frame); v != nil || in.InMessage() != s.want {
			t.Errorf("step %d: in message %v (%v), want %v", i, in.InMessage(), v, s.want)
		}
	}
}

// FuzzInspector: whatever the bytes and however they are split, the Inspector never
// panics, passes a prefix of what it is given, and decides the same as when it is
// given everything at once.
func FuzzInspector(f *testing.F) {
	f.Add(cat(frame(fin|opText, -1, []byte("hi")), frame(fin|opPing, -1, nil)), uint8(1), false)
	f.Add(cat(frame(opText, -1, []byte("h")), frame(fin|opContinuation, -1, []byte("i"))), uint8(2), true)
	f.Add(frame(fin|opText, 70000, nil), uint8(5), false)
	f.Add(frame(fin|opClose, -1, []byte{1}), uint8(1), false)
	f.Add([]byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, uint8(3), true)
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8, deflate bool) {
		cfg := Config{Deflate: deflate, MaxFragments: 4, FrameRate: 1e-9, FrameBurst: 8}
		var whole Inspector
		whole.Init(cfg)
		wantN, wantV := whole.Scan(stream)
		if wantN < 0 || wantN > len(stream) || (wantV == nil && wantN != len(stream)) {
			t.Fatalf("whole: passed %d of %d (%v)", wantN, len(stream), wantV)
		}
		var split Inspector
		split.Init(cfg)
		step := int(chunk%16) + 1
		passed := 0
		var got *Violation
		for i := 0; i < len(stream) && got == nil; i += step {
			p := stream[i:min(i+step, len(stream))]
			n, v := split.Scan(p)
			if n < 0 || n > len(p) || (v == nil && n != len(p)) {
				t.Fatalf("chunk at %d: passed %d of %d (%v)", i, n, len(p), v)
			}
			passed += n
			got = v
		}
		// Split, the first bytes of the refused frame's header may pass (not all of it).
		if passed < wantN || passed > wantN+9 || (got == nil) != (wantV == nil) || (got != nil && got.Code != wantV.Code) {
			t.Fatalf("split in %d: passed %d (%v), whole: %d (%v)", step, passed, got, wantN, wantV)
		}
	})
}
