// Command baseline is the classic gorilla hub, written in the style of gorilla/websocket's
// chat example, for herald-bench to compare Herald with: one hub goroutine owns the
// subscriber sets and receives register, unregister and broadcast on channels; each client
// has a send channel of 256 messages, a read pump and a write pump. A client whose send
// channel is full is dropped. Unlike the chat example, the write pump writes one frame per
// message (each with its own WriteMessage), as Herald's protocol has one message per frame.
//
// It speaks just enough of Herald's protocol for the load tool: GET /ws?channels=a,b
// subscribes (a welcome frame is sent once the subscriptions are in force); POST
// /api/publish with "Authorization: Bearer <key>" and {"channel": "...", "data": ...}
// broadcasts {"op":"message","channel":...,"data":...} to the channel's subscribers; a
// client's {"op":"publish","channel":...,"data":...,"ref":...} does the same and is answered
// with ack.
//
//	go build -o bin/ ./gateway/cmd/herald-bench/baseline
//	bin/baseline -addr 127.0.0.1:8090 -api-key k
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// Time allowed to write a message to the peer.
	writeWait = 10 * time.Second
	// Time allowed to read the next pong message from the peer.
	pongWait = 60 * time.Second
	// Send pings to peer with this period. Must be less than pongWait.
	pingPeriod = (pongWait * 9) / 10
	// Maximum message size allowed from peer.
	maxMessageSize = 64 << 10
	// Messages a client's send channel holds before the client is dropped as slow.
	sendBuffer = 256
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
}

// broadcast is one message for the subscribers of a channel.
type broadcast struct {
	channel string
	frame   []byte
}

// Hub maintains the set of active clients and broadcasts messages to them. Only its run
// goroutine touches channels.
type Hub struct {
	channels   map[string]map[*Client]bool
	broadcast  chan broadcast
	register   chan *Client
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		channels:   make(map[string]map[*Client]bool),
		broadcast:  make(chan broadcast),
		register:   make(chan *Client),
		unregister: make(chan *Client),
	}
}

var welcome = []byte(`{"op":"welcome"}`)

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			for _, ch := range client.subs {
				if h.channels[ch] == nil {
					h.channels[ch] = make(map[*Client]bool)
				}
				h.channels[ch][client] = true
			}
			client.send <- welcome // the first message: send has room
		case client := <-h.unregister:
			h.remove(client)
		case m := <-h.broadcast:
			for client := range h.channels[m.channel] {
				select {
				case client.send <- m.frame:
				default:
					h.remove(client)
				}
			}
		}
	}
}

// remove takes client out of every channel and closes its send channel, once.
func (h *Hub) remove(client *Client) {
	if client.removed {
		return
	}
	client.removed = true
	for _, ch := range client.subs {
		delete(h.channels[ch], client)
		if len(h.channels[ch]) == 0 {
			delete(h.channels, ch)
		}
	}
	close(client.send)
}

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	subs []string
	// Buffered channel of outbound messages.
	send chan []byte
	// removed is owned by the hub's goroutine.
	removed bool
}

// readPump pumps messages from the websocket connection to the hub. The application runs
// readPump in a per-connection goroutine. The application ensures that there is at most
// one reader on a connection by executing all reads from this goroutine.
func (c *Client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { _ = c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		_, message, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		var req struct {
			Op      string          `json:"op"`
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
			Ref     string          `json:"ref"`
		}
		if json.Unmarshal(message, &req) != nil || req.Op != "publish" || req.Channel == "" || len(req.Data) == 0 {
			continue
		}
		c.hub.broadcast <- broadcast{channel: req.Channel, frame: messageFrame(req.Channel, req.Data)}
		ack, _ := json.Marshal(map[string]string{"op": "ack", "ref": req.Ref, "id": nextID()})
		select {
		case c.send <- ack:
		default:
		}
	}
}

// writePump pumps messages from the hub to the websocket connection. A goroutine running
// writePump is started for each connection. The application ensures that there is at most
// one writer to a connection by executing all writes from this goroutine.
func (c *Client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case message, ok := <-c.send:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// The hub closed the channel.
				_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, message); err != nil {
				return
			}
		case <-ticker.C:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// serveWs handles websocket requests from the peer.
func serveWs(hub *Hub, w http.ResponseWriter, r *http.Request) {
	var subs []string
	if v := r.URL.Query().Get("channels"); v != "" {
		subs = strings.Split(v, ",")
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	client := &Client{hub: hub, conn: conn, subs: subs, send: make(chan []byte, sendBuffer)}
	client.hub.register <- client

	// Allow collection of memory referenced by the caller by doing all work in
	// new goroutines.
	go client.writePump()
	go client.readPump()
}

var ids atomic.Int64

func nextID() string { return strconv.FormatInt(ids.Add(1), 10) }

func messageFrame(channel string, data json.RawMessage) []byte {
	b, _ := json.Marshal(struct {
		Op      string          `json:"op"`
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}{"message", channel, data})
	return b
}

// servePublish is POST /api/publish: the message is broadcast before the answer.
func servePublish(hub *Hub, key string, w http.ResponseWriter, r *http.Request) {
	got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
		http.Error(w, `{"error":{"code":"unauthorized","message":"missing or wrong API key"}}`, http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessageSize))
	var req struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	if err != nil || json.Unmarshal(body, &req) != nil || req.Channel == "" || len(req.Data) == 0 {
		http.Error(w, `{"error":{"code":"bad_request","message":"want {\"channel\":...,\"data\":...}"}}`, http.StatusBadRequest)
		return
	}
	hub.broadcast <- broadcast{channel: req.Channel, frame: messageFrame(req.Channel, req.Data)}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, `{"id":%q}`+"\n", nextID())
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "http service address")
	key := flag.String("api-key", "", "bearer key of POST /api/publish (required)")
	flag.Parse()
	if *key == "" {
		log.Fatal("baseline: -api-key is required")
	}
	hub := newHub()
	go hub.run()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) { serveWs(hub, w, r) })
	mux.HandleFunc("POST /api/publish", func(w http.ResponseWriter, r *http.Request) { servePublish(hub, *key, w, r) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, `{"status":"ready"}`) })
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close() // hijacked connections are not closed: the process exit closes them
	}()
	log.Printf("baseline: classic gorilla hub listening on %s", *addr)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
