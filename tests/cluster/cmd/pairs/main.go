// Command pairs is the benchmark's ceiling for Kubernetes mode: it creates the same NetworkPolicy + Pod pairs
// the dispatcher creates, with client-go at a given concurrency, and prints the pair rate as one JSON line.
package main

func main() {}
