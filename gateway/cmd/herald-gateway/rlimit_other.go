//go:build !unix

package main

// descriptorLimit is unknown here.
func descriptorLimit() (uint64, bool) { return 0, false }
