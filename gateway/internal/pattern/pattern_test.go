package pattern

import "testing"

func TestPatterns(t *testing.T) {
	p := Compile([]string{"news", "user:{sub}:*", " room:* ", ""}, "alice")
	tests := []struct {
		ch   string
		want bool
	}{
		{"news", true}, {"news2", false}, {"new", false}, {"user:alice:x", true}, {"user:alice:", true},
		{"user:bob:x", false}, {"room:1", true}, {"room", false}, {"", false},
	}
	for _, tt := range tests {
		if got := p.Allows(tt.ch); got != tt.want {
			t.Errorf("allows(%q): got %v, want %v", tt.ch, got, tt.want)
		}
	}
	if !Compile([]string{"*"}, "").Allows("") {
		t.Error(`"*" does not allow publishing to everyone`)
	}
	if Compile(nil, "x").Allows("a") || Compile([]string{"{sub}"}, "*").Allows("x") {
		t.Error("no patterns, or a sub of *, allowed a channel")
	}
}
