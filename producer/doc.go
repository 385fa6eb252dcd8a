// Package producer publishes Herald messages to RabbitMQ for Go services.
//
// A Publisher publishes to the durable fanout exchange that every gateway's stream is
// bound to, with publisher confirms: Publish returns nil only once the broker has
// confirmed the message. Every gateway then delivers it to the WebSocket connections it
// addresses (docs/PROTOCOL.md sections 8 and 15).
package producer

import "github.com/heraldgw/herald/producer/message"

// Message is a Herald message: see package message for its fields and routing rules.
type Message = message.Message
