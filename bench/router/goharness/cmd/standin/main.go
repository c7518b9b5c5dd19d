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
// /readyz, /status and /metrics answer like standin_pod.py. One epoll loop on
// one thread serves the listener and every connection (internal/evloop says
// why): each readiness is one read, each message one write.
//
// A benchmark fixture only: no resume, no audio checks. Never used outside bench/.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"voxfleetbench/internal/evloop"
	"voxfleetbench/internal/wsframe"
)

var bytesPerSample = map[string]int{"pcm16": 2, "float32": 4}

// closeWait: after our close frame, the peer has this long to answer before the connection is closed.
const closeWait = 5 * time.Second

type pod struct {
	id            string
	capacity      int64
	sessions      int64
	sessionsTotal int64
	framesTotal   int64

	poller *evloop.Poller
	conns  []*conn // by fd
	timers []timer // closing connections, in deadline order
}

type timer struct {
	at time.Time
	c  *conn
}

func (p *pod) status() []byte {
	// the field order and separators of Python's json.dumps(status) in standin_pod.py
	id, _ := json.Marshal(p.id)
	active := p.sessions
	return fmt.Appendf(nil, `{"pod": %s, "ready": true, "draining": false, "capacity": %d, "active_sessions": %d, `+
		`"free_slots": %d, "queue_length": 0, "model": "standin", "device": "none", "max_batch": 1, `+
		`"frames_total": %d, "sessions_total": %d}`+"\n",
		id, p.capacity, active, max(0, p.capacity-active), p.framesTotal, p.sessionsTotal)
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
			p.sessions, p.capacity)
		return wsframe.HTTPResponse(200, "OK", []byte(body), "text/plain; version=0.0.4; charset=utf-8")
	}
	return wsframe.HTTPResponse(404, "Not Found", []byte("not found\n"), "text/plain; charset=utf-8")
}

// conn is one client connection: an HTTP request, or a WebSocket session.
type conn struct {
	evloop.Conn
	pod            *pod
	upgraded       bool
	frames         wsframe.Parser
	session        string
	bytesPerSecond float64
	audioBytes     int64
	closing        bool   // our close frame is sent
	discard        bool   // after a protocol error: input is dropped until the peer hangs up (or the timer)
	finished       bool   // the connection closes once its output is written
	msg, out       []byte // reused for every ack and every message written
}

func (p *pod) accept(ln int) {
	for range 64 { // then the connections already open get their turn
		fd, _, err := syscall.Accept4(ln, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		if err == syscall.EAGAIN {
			return
		}
		if err != nil {
			if err == syscall.EMFILE || err == syscall.ENFILE {
				time.Sleep(10 * time.Millisecond) // out of file descriptors: do not spin
				return
			}
			continue // e.g. ECONNABORTED
		}
		evloop.NoDelay(fd)
		c := &conn{pod: p, bytesPerSecond: 32000, frames: wsframe.Parser{ExpectMasked: true}}
		if c.Attach(p.poller, fd, false) != nil {
			syscall.Close(fd)
			continue
		}
		for len(p.conns) <= fd {
			p.conns = append(p.conns, nil)
		}
		p.conns[fd] = c
	}
}

// drop closes the connection.
func (p *pod) drop(c *conn) {
	if c.Closed {
		return
	}
	if c.session != "" {
		p.sessions--
	}
	p.conns[c.Fd] = nil
	c.Close()
}

// finish closes the connection once what it has to say is written.
func (s *conn) finish() {
	s.finished = true
	if !s.Pending() {
		s.pod.drop(s)
	}
}

func (s *conn) onWritable() {
	if s.Flush() != nil || s.finished && !s.Pending() {
		s.pod.drop(s)
	}
}

func (s *conn) onReadable(buf []byte) {
	data, err := s.Read(buf)
	if err != nil {
		s.pod.drop(s)
		return
	}
	if data == nil || s.discard || s.finished {
		return
	}
	used := 0
	if !s.upgraded {
		first, headers, n, err := wsframe.ParseHead(data)
		if err != nil {
			s.pod.drop(s)
			return
		}
		if n == 0 {
			s.Keep(data)
			return
		}
		used = n
		path := "/"
		if parts := strings.Fields(first); len(parts) > 1 {
			path = parts[1]
		}
		if !strings.EqualFold(headers["upgrade"], "websocket") {
			s.Write(s.pod.http(path))
			s.finish()
			return
		}
		if s.Write(wsframe.ServerResponse(headers["sec-websocket-key"])) != nil {
			s.pod.drop(s)
			return
		}
		s.upgraded = true
	}
	for !s.Closed {
		op, payload, n, err := s.frames.Next(data[used:])
		if err != nil {
			s.close(1002, "protocol error")
			s.discard = true // the stream is out of step: wait for the peer's end (or the timer)
			return
		}
		if n == 0 {
			break
		}
		used += n
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
			s.finish()
			return
		}
	}
	if !s.Closed {
		s.Keep(data[used:])
	}
}

func (s *conn) write(op byte, payload []byte) {
	s.out = wsframe.AppendServerFrame(s.out[:0], op, payload)
	if s.Write(s.out) != nil {
		s.pod.drop(s) // the peer is gone
	}
}

func (s *conn) onFrame(payload []byte) {
	if s.session == "" || s.closing || len(payload) < 4 {
		s.fail("bad_frame", "binary frame before start or without a sequence header", 1007)
		return
	}
	seq := uint32(payload[0])<<24 | uint32(payload[1])<<16 | uint32(payload[2])<<8 | uint32(payload[3])
	s.audioBytes += int64(len(payload) - 4)
	s.pod.framesTotal++
	seconds := float64(s.audioBytes) / s.bytesPerSecond
	// {"type":"ack","seq":S,"committed_seq":S,"committed_seconds":T}: byte for byte the Python stand-in's
	// (the router's fast path parses this form); header and payload in one buffer, one write
	msg := append(s.msg[:0], `{"type":"ack","seq":`...)
	msg = strconv.AppendUint(msg, uint64(seq), 10)
	msg = append(msg, `,"committed_seq":`...)
	msg = strconv.AppendUint(msg, uint64(seq), 10)
	msg = append(msg, `,"committed_seconds":`...)
	msg = strconv.AppendFloat(msg, seconds, 'f', 3, 64)
	msg = append(msg, '}')
	s.msg = msg
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
		s.pod.sessions++
		s.pod.sessionsTotal++
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
	s.pod.timers = append(s.pod.timers, timer{time.Now().Add(closeWait), s})
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

// loop serves the listener and every connection until a byte arrives on stop.
func (p *pod) loop(ln, stop int) {
	runtime.LockOSThread()
	buf := make([]byte, evloop.ReadBytes)
	for {
		timeout := time.Duration(-1)
		if len(p.timers) > 0 {
			timeout = max(0, time.Until(p.timers[0].at))
		}
		for _, ev := range p.poller.Wait(timeout) {
			fd := int(ev.Fd)
			switch {
			case fd == ln:
				p.accept(ln)
			case fd == stop:
				return
			case fd < len(p.conns) && p.conns[fd] != nil:
				c := p.conns[fd]
				if evloop.Writable(ev) {
					c.onWritable()
				}
				if evloop.Readable(ev) && !c.Closed {
					c.onReadable(buf)
				}
			}
		}
		for len(p.timers) > 0 && !p.timers[0].at.After(time.Now()) {
			p.drop(p.timers[0].c) // nothing if it is closed already
			p.timers[0] = timer{}
			p.timers = p.timers[1:]
		}
	}
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
	poller, err := evloop.NewPoller()
	var ln int
	if err == nil {
		ln, err = evloop.Listen(*host, *port)
	}
	var pipe [2]int
	if err == nil {
		err = syscall.Pipe2(pipe[:], syscall.O_CLOEXEC)
	}
	if err == nil {
		err = poller.Add(ln, false)
	}
	if err == nil {
		err = poller.Add(pipe[0], false)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
	// a signal wakes the loop through the pipe
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		syscall.Write(pipe[1], []byte{1})
	}()
	fmt.Printf("stand-in pod %s listening on ws://%s:%d (capacity %d)\n", *podID, *host, *port, *capacity)
	p := &pod{id: *podID, capacity: *capacity, poller: poller}
	p.loop(ln, pipe[0])
	syscall.Close(ln)
	fmt.Printf("stand-in pod %s stopped: %d sessions, %d frames\n", *podID, p.sessionsTotal, p.framesTotal)
}
