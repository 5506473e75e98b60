// go_sender posts Docker-shaped log records to a Forward server with fluent-logger-golang,
// configured the way Docker's fluentd log driver (daemon/logger/fluentd) configures it.
//
// It prints {"sent": N} on success and exits non-zero on any error, on a watchdog timeout
// (an ack that never comes would otherwise block forever), or if the library had to retry.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	network := flag.String("network", "tcp", "tcp or unix")
	host := flag.String("host", "127.0.0.1", "server host (tcp)")
	port := flag.Int("port", 24224, "server port (tcp)")
	socket := flag.String("socket", "", "server socket path (unix)")
	tag := flag.String("tag", "docker.0123456789ab", "event tag")
	count := flag.Int("count", 100, "number of log lines")
	base := flag.Int64("base-ns", 1700000000123456789, "time of line 0, Unix nanoseconds")
	step := flag.Int64("step-ns", 1234567, "time between lines, nanoseconds")
	subSecond := flag.Bool("sub-second", true, "EventTime (fluentd-sub-second-precision)")
	ack := flag.Bool("ack", true, "ask for acks (fluentd-request-ack)")
	asJSON := flag.Bool("json", false, "MarshalAsJSON: send a JSON stream instead of msgpack")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()

	go func() {
		time.Sleep(*timeout)
		fmt.Fprintf(os.Stderr, "go_sender: timed out after %v\n", *timeout)
		os.Exit(3)
	}()

	// As Docker's driver builds it from fluentd-address, fluentd-sub-second-precision,
	// fluentd-request-ack and fluentd-async (false: each Post waits for its write and ack).
	// One difference: MaxRetry is 1, not Docker's near-unlimited default, because a retried
	// write resends the line; here that must fail the run rather than duplicate a line.
	// MarshalAsJSON is never set by Docker; -json exists only to probe a server's JSON support.
	logger, err := fluent.New(fluent.Config{
		FluentNetwork:      *network,
		FluentHost:         *host,
		FluentPort:         *port,
		FluentSocketPath:   *socket,
		BufferLimit:        1024 * 1024,
		RetryWait:          1000,
		MaxRetry:           1,
		MaxRetryWait:       1000,
		SubSecondPrecision: *subSecond,
		RequestAck:         *ack,
		Async:              false,
		MarshalAsJSON:      *asJSON,
	})
	if err != nil {
		fail("connect", err)
	}
	const containerID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for i := 0; i < *count; i++ {
		record := map[string]string{
			"container_id":   containerID,
			"container_name": "/web-1",
			"source":         "stdout",
			"log":            fmt.Sprintf("line %d", i),
		}
		ts := time.Unix(0, *base+int64(i)*(*step))
		if err := logger.PostWithTime(*tag, ts, record); err != nil {
			fail(fmt.Sprintf("post line %d", i), err)
		}
	}
	if err := logger.Close(); err != nil {
		fail("close", err)
	}
	out, _ := json.Marshal(map[string]int{"sent": *count})
	fmt.Println(string(out))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "go_sender: %s: %v\n", what, err)
	os.Exit(1)
}
