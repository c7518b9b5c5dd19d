// Command standin is the router benchmark's stand-in STT pod in Go: the same
// behaviour and command line as bench/router/standin_pod.py, at a fraction of
// its CPU.
//
//	standin --port 8001 [--host 127.0.0.1] [--pod-id standin-0] [--capacity 100000]
//
// Why it exists: the benchmark runs on a 2-core machine where the stand-in
// pods, the load generator and the proxy under test share the CPU. At 1000
// streams the Python stand-ins took 0.6-0.7 cores, starving the router of
// the CPU it is measured on. This one answers the same way: `start` gets
// `ready`, every binary frame (seq + audio) gets the pod's `ack` at once
// (formatted byte for byte like the Python stand-in, which the router's fast
// path parses), `end` gets `end` and close 1000, pings get pongs; /healthz,
// /readyz, /status and /metrics answer like standin_pod.py. One goroutine
// per connection; each message is written with one write call.
//
// A benchmark fixture only: no resume, no audio checks. Never used outside bench/.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"voxfleetbench/internal/wsframe"
)

var bytesPerSample = map[string]int{"pcm16": 2, "float32": 4}

type pod struct {
	id            string
	capacity      int64
	sessions      atomic.Int64
	sessionsTotal atomic.Int64
	framesTotal   atomic.Int64
}

func (p *pod) status() []byte {
	// the field order and separators of Python's json.dumps(status) in standin_pod.py
	id, _ := json.Marshal(p.id)
	active := p.sessions.Load()
	return fmt.Appendf(nil, `{"pod": %s, "ready": true, "draining": false, "capacity": %d, "active_sessions": %d, `+
		`"free_slots": %d, "queue_length": 0, "model": "standin", "device": "none", "max_batch": 1, `+
		`"frames_total": %d, "sessions_total": %d}`+"\n",
		id, p.capacity, active, max(0, p.capacity-active), p.framesTotal.Load(), p.sessionsTotal.Load())
}

func (p *pod) http(path string) []byte {
	path, _, _ = strings.Cut(path, "?")
	switch path {
	case "/healthz":
		return wsframe.HTTPResponse(200, "OK", []byte("ok\n"), "text/plain; charset=utf-8")
	case "/readyz":
		return wsframe.HTTPResponse(200, "OK", []byte("ready\n"), "text/plain; charset=utf-8")
	case "/status":
		return wsframe.HTTPResponse(200, "OK", p.status(), "application/json")
	case "/metrics":
		body := fmt.Sprintf("voxfleet_pod_sessions_active %d\nvoxfleet_pod_sessions_capacity %d\nvoxfleet_pod_ready 1\n",
			p.sessions.Load(), p.capacity)
		return wsframe.HTTPResponse(200, "OK", []byte(body), "text/plain; version=0.0.4; charset=utf-8")
	}
	return wsframe.HTTPResponse(404, "Not Found", []byte("not found\n"), "text/plain; charset=utf-8")
}

// conn is one client connection: an HTTP request, or a WebSocket session.
type conn struct {
	pod            *pod
	c              net.Conn
	session        string
	bytesPerSecond float64
	audioBytes     int64
	closing        bool
	out            []byte // reused for every message written
}

func (p *pod) serve(c net.Conn) {
	s := &conn{pod: p, c: c, bytesPerSecond: 32000}
	defer func() {
		if s.session != "" {
			p.sessions.Add(-1)
		}
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 64*1024)
	first, headers, err := wsframe.ReadHead(r)
	if err != nil {
		return
	}
	path := "/"
	if parts := strings.Fields(first); len(parts) > 1 {
		path = parts[1]
	}
	if !strings.EqualFold(headers["upgrade"], "websocket") {
		c.Write(p.http(path))
		return
	}
	if _, err := c.Write(wsframe.ServerResponse(headers["sec-websocket-key"])); err != nil {
		return
	}
	frames := wsframe.NewReader(r, true)
	for {
		op, payload, err := frames.Next()
		if err != nil {
			if errors.Is(err, wsframe.ErrProtocol) {
				s.close(1002, "protocol error")
				io.Copy(io.Discard, r) // the stream is out of step: wait for the peer's end (or the 5 s timer)
			}
			return
		}
		switch op {
		case wsframe.OpBinary:
			s.onFrame(payload)
		case wsframe.OpText:
			s.onText(payload)
		case wsframe.OpPing:
			s.write(wsframe.OpPong, payload)
		case wsframe.OpClose:
			if !s.closing {
				s.closing = true
				s.write(wsframe.OpClose, payload[:min(2, len(payload))])
			}
			return
		}
	}
}

func (s *conn) write(op byte, payload []byte) {
	s.out = wsframe.AppendServerFrame(s.out[:0], op, payload)
	s.c.Write(s.out)
}

func (s *conn) onFrame(payload []byte) {
	if s.session == "" || s.closing || len(payload) < 4 {
		s.fail("bad_frame", "binary frame before start or without a sequence header", 1007)
		return
	}
	seq := uint32(payload[0])<<24 | uint32(payload[1])<<16 | uint32(payload[2])<<8 | uint32(payload[3])
	s.audioBytes += int64(len(payload) - 4)
	s.pod.framesTotal.Add(1)
	seconds := float64(s.audioBytes) / s.bytesPerSecond
	// {"type":"ack","seq":S,"committed_seq":S,"committed_seconds":T}: byte for byte the Python stand-in's
	// (the router's fast path parses this form); header and payload in one buffer, one write
	msg := make([]byte, 0, 96)
	msg = append(msg, `{"type":"ack","seq":`...)
	msg = strconv.AppendUint(msg, uint64(seq), 10)
	msg = append(msg, `,"committed_seq":`...)
	msg = strconv.AppendUint(msg, uint64(seq), 10)
	msg = append(msg, `,"committed_seconds":`...)
	msg = strconv.AppendFloat(msg, seconds, 'f', 3, 64)
	msg = append(msg, '}')
	s.write(wsframe.OpText, msg)
}

func (s *conn) onText(payload []byte) {
	var msg any
	if err := json.Unmarshal(payload, &msg); err != nil {
		s.fail("bad_json", "not valid JSON", 1007)
		return
	}
	fields, _ := msg.(map[string]any)
	kind := fields["type"]
	switch {
	case kind == "start" && s.session == "":
		rate, channels := number(fields["sample_rate"], 16000), number(fields["channels"], 1)
		encoding, _ := fields["encoding"].(string)
		if _, ok := fields["encoding"]; !ok {
			encoding = "pcm16"
		}
		width, ok := bytesPerSample[encoding]
		if !ok {
			width = 2
		}
		s.bytesPerSecond = float64(rate * width * channels)
		s.session = newSessionID()
		s.pod.sessions.Add(1)
		s.pod.sessionsTotal.Add(1)
		ready, _ := json.Marshal(struct {
			Type        string `json:"type"`
			SessionID   string `json:"session_id"`
			ResumeToken string `json:"resume_token"`
			NextSeq     int    `json:"next_seq"`
			Resumed     bool   `json:"resumed"`
		}{"ready", s.session, "standin." + s.pod.id + "." + s.session, 0, false})
		s.write(wsframe.OpText, ready)
	case kind == "end" && s.session != "":
		seconds := float64(s.audioBytes) / s.bytesPerSecond
		s.write(wsframe.OpText, []byte(`{"type": "end", "segments": 0, "audio_seconds": `+pyFloat(seconds)+`}`))
		s.close(1000, "end of session")
	case kind == "resume":
		s.fail("unknown_session", "a stand-in pod keeps no sessions to resume", 1008)
	default:
		s.fail("bad_message", "unexpected "+pyRepr(kind), 1008)
	}
}

// fail sends an error message and closes with code, like standin_pod.py's _error.
func (s *conn) fail(code, message string, closeCode int) {
	c, _ := json.Marshal(code)
	m, _ := json.Marshal(message)
	s.write(wsframe.OpText, []byte(`{"type": "error", "code": `+string(c)+`, "message": `+string(m)+`}`))
	s.close(closeCode, code)
}

// close sends our close frame; the peer's answer ends the connection, or the 5 s timer does.
func (s *conn) close(code int, reason string) {
	if s.closing {
		return
	}
	s.closing = true
	s.write(wsframe.OpClose, wsframe.ClosePayload(code, reason))
	time.AfterFunc(5*time.Second, func() { s.c.Close() })
}

func number(v any, dflt int) int {
	if f, ok := v.(float64); ok {
		return int(f)
	}
	return dflt
}

// pyFloat formats round(x, 3) the way Python prints a float (2.0, not 2).
func pyFloat(x float64) string {
	text := strconv.FormatFloat(x, 'f', 3, 64)
	v, _ := strconv.ParseFloat(text, 64)
	text = strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(text, ".eE") {
		text += ".0"
	}
	return text
}

// pyRepr is Python's repr of a JSON value, as far as error messages need it.
func pyRepr(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case string:
		return "'" + v + "'"
	case bool:
		if v {
			return "True"
		}
		return "False"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func newSessionID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // a version-4 UUID, as uuid.uuid4().hex
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:])
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (required)")
	podID := flag.String("pod-id", "standin-0", "name reported on /status")
	capacity := flag.Int64("capacity", 100_000, "sessions reported as capacity on /status")
	flag.Parse()
	if *port == 0 {
		fmt.Fprintln(os.Stderr, "standin: --port is required")
		os.Exit(2)
	}
	p := &pod{id: *podID, capacity: *capacity}
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors: do not spin
				continue
			}
			c.(*net.TCPConn).SetNoDelay(true)
			go p.serve(c)
		}
	}()
	fmt.Printf("stand-in pod %s listening on ws://%s:%d (capacity %d)\n", *podID, *host, *port, *capacity)
	<-stop
	ln.Close()
	fmt.Printf("stand-in pod %s stopped: %d sessions, %d frames\n", *podID, p.sessionsTotal.Load(), p.framesTotal.Load())
}
