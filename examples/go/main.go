// A Broadcast gateway in Go, on the Redis broker, with the standard library only: it
// writes the minimal task message of docs/gateway.md itself (no Celery library).
//
//	go run . redis://host:6379/0 < events.jsonl
//
// Each line of standard input is one finished-request event (JSON); each becomes one
// message LPUSHed onto the list `broadcast.fanout`, which the workers move into their
// stream. Prints the number sent; exits 1 at the first write the broker refuses (e.g.
// Redis at maxmemory: docs/gateway.md says what a gateway should do then).
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	task  = "broadcast.fan_out"
	queue = "broadcast.fanout"
)

// message is kombu's list envelope with Celery protocol 2 headers (docs/gateway.md).
type message struct {
	Body            string     `json:"body"`
	ContentType     string     `json:"content-type"`
	ContentEncoding string     `json:"content-encoding"`
	Headers         headers    `json:"headers"`
	Properties      properties `json:"properties"`
}

type headers struct {
	Lang   string `json:"lang"`
	Task   string `json:"task"`
	ID     string `json:"id"`
	RootID string `json:"root_id"`
}

type properties struct {
	BodyEncoding  string       `json:"body_encoding"`
	DeliveryMode  int          `json:"delivery_mode"`
	DeliveryInfo  deliveryInfo `json:"delivery_info"`
	DeliveryTag   string       `json:"delivery_tag"`
	CorrelationID string       `json:"correlation_id"`
}

type deliveryInfo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

func uuid4() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// taskMessage wraps one event: body `[[event], {}, embed]`, base64 in the envelope.
func taskMessage(event json.RawMessage) ([]byte, error) {
	embed := map[string]any{"callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil}
	body, err := json.Marshal([]any{[]json.RawMessage{event}, map[string]any{}, embed})
	if err != nil {
		return nil, err
	}
	id := uuid4()
	return json.Marshal(message{
		Body:            base64.StdEncoding.EncodeToString(body),
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Headers:         headers{Lang: "go", Task: task, ID: id, RootID: id},
		Properties: properties{
			BodyEncoding:  "base64",
			DeliveryMode:  2,
			DeliveryInfo:  deliveryInfo{Exchange: "", RoutingKey: queue},
			DeliveryTag:   uuid4(),
			CorrelationID: id,
		},
	})
}

// redisConn speaks just enough RESP for AUTH, SELECT and LPUSH.
type redisConn struct {
	conn   net.Conn
	reader *bufio.Reader
}

func dial(raw string) (*redisConn, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "redis" {
		return nil, fmt.Errorf("not a redis:// URL: %q", raw)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	conn, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		return nil, err
	}
	r := &redisConn{conn: conn, reader: bufio.NewReader(conn)}
	if password, ok := u.User.Password(); ok {
		args := []string{"AUTH", password}
		if name := u.User.Username(); name != "" {
			args = []string{"AUTH", name, password}
		}
		if _, err := r.do(args...); err != nil {
			return nil, err
		}
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		if _, err := strconv.Atoi(db); err != nil {
			return nil, fmt.Errorf("bad database %q", db)
		}
		if _, err := r.do("SELECT", db); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// do sends one command and reads its reply: a status or an integer; an error reply
// (e.g. "OOM command not allowed when used memory > 'maxmemory'") is returned as error.
func (r *redisConn) do(args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, arg := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(arg), arg)
	}
	if err := r.conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(r.conn, b.String()); err != nil {
		return "", err
	}
	line, err := r.reader.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", errors.New(line[1:])
	case strings.HasPrefix(line, "+"), strings.HasPrefix(line, ":"):
		return line[1:], nil
	default:
		return "", fmt.Errorf("unexpected reply %q", line)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run . redis://host:6379/0 < events.jsonl")
		os.Exit(2)
	}
	redis, err := dial(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "broadcast.connect_failed error:", err)
		os.Exit(1)
	}
	defer redis.conn.Close()

	sent := 0
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1024*1024), 64*1024*1024) // an event may be large
	for lines.Scan() {
		line := strings.TrimSpace(lines.Text())
		if line == "" {
			continue
		}
		if !json.Valid([]byte(line)) {
			fmt.Fprintln(os.Stderr, "broadcast.bad_event: not JSON")
			os.Exit(1)
		}
		payload, err := taskMessage(json.RawMessage(line))
		if err == nil {
			_, err = redis.do("LPUSH", queue, string(payload))
		}
		if err != nil {
			// A gateway logs and counts this, and goes on serving (docs/gateway.md).
			fmt.Printf("sent %d\n", sent)
			fmt.Fprintln(os.Stderr, "broadcast.send_failed error:", err)
			os.Exit(1)
		}
		sent++
	}
	if err := lines.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "reading events:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %d\n", sent)
}
