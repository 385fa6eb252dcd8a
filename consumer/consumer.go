// Package consumer delivers the messages on Herald's bus to a Dispatcher: the gateway's
// hub. It has the two buses behind the gateway's interfaces: Stream, one consumer of the
// RabbitMQ stream bound to the fanout exchange, and Embedded, the in-process bus with a
// bounded log that a single gateway runs on when no broker is configured.
package consumer

import "github.com/heraldgw/herald/producer/message"

// Dispatcher receives every message the bus delivers, in the bus's order, from one
// goroutine at a time. Dispatch must not block on any one client.
type Dispatcher interface {
	Dispatch(m message.Message)
}
