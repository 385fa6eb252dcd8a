package gateway

// Bus is what a gateway runs on, one of two implementations that main picks and asserts
// at compile time: consumer.Embedded, the in-process bus of a single gateway, and
// consumer.Rabbit, RabbitMQ with its stream (on one broker or a cluster). The Server sees
// it through the narrower interfaces it uses (Publisher, BusHealth, Log).
type Bus interface {
	Publisher
	BusHealth
	Log
}
