// Package wsframe is the least of RFC 6455 that the Go router-benchmark
// harness needs (cmd/standin, cmd/loadgen): handshakes as bytes, frames built
// with one header per message, a parser that cuts whole messages out of the
// bytes read so far and unmasks them in place.
//
// It mirrors bench/router/wsframes.py: no extensions, no subprotocols, no
// UTF-8 validation, messages up to 1 MiB. It must never be used outside bench/.
package wsframe

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Opcodes.
const (
	OpCont   = 0x0
	OpText   = 0x1
	OpBinary = 0x2
	OpClose  = 0x8
	OpPing   = 0x9
	OpPong   = 0xA
)

const (
	// MaxMessageBytes: larger frames are a protocol error here (the benchmark's messages are a few KiB).
	MaxMessageBytes = 1 << 20
	// MaxHeadBytes: an HTTP head (request or response) longer than this is refused.
	MaxHeadBytes = 16 * 1024
)

const guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// ErrProtocol is returned (wrapped) when the peer breaks the protocol, as far as this package checks it.
var ErrProtocol = errors.New("websocket protocol error")

// NewKey is a random Sec-WebSocket-Key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// AcceptFor is the Sec-WebSocket-Accept answering key.
func AcceptFor(key string) string {
	sum := sha1.Sum([]byte(key + guid))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// ClientRequest is the client's upgrade request.
func ClientRequest(host string, port int, path, key string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + ":" + strconv.Itoa(port) +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: voxfleet-bench\r\n\r\n")
}

// ServerResponse is the server's 101 for key.
func ServerResponse(key string) []byte {
	return []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + AcceptFor(key) + "\r\nServer: voxfleet-standin\r\n\r\n")
}

// HTTPResponse is a whole HTTP/1.1 response that closes the connection.
func HTTPResponse(status int, reason string, body []byte, contentType string) []byte {
	head := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		status, reason, contentType, len(body))
	return append([]byte(head), body...)
}

// ParseHead parses the HTTP head (request or response) at the start of buf: its first line, its
// headers (lower-case names) and its length up to and with the blank line. n == 0 (and no error)
// means buf does not hold the whole head yet.
func ParseHead(buf []byte) (first string, headers map[string]string, n int, err error) {
	// end: where the last header line's "\n" is; n: the head's length with its blank line
	end := bytes.Index(buf, []byte("\n\r\n"))
	n = end + 3
	if bare := bytes.Index(buf, []byte("\n\n")); bare >= 0 && (end < 0 || bare < end) {
		end, n = bare, bare+2
	}
	switch {
	case end < 0 && len(buf) > MaxHeadBytes, end >= 0 && n > MaxHeadBytes:
		return "", nil, 0, fmt.Errorf("%w: HTTP head too long", ErrProtocol)
	case end < 0:
		return "", nil, 0, nil
	}
	headers = map[string]string{}
	for i, line := range strings.Split(string(buf[:end+1]), "\n") {
		line = strings.TrimRight(line, "\r")
		if i == 0 {
			first = line
		} else if name, value, ok := strings.Cut(line, ":"); ok {
			headers[strings.ToLower(strings.TrimSpace(name))] = strings.TrimSpace(value)
		}
	}
	return first, headers, n, nil
}

// CheckResponse fails unless the head is the server's 101 for key.
func CheckResponse(first string, headers map[string]string, key string) error {
	parts := strings.Fields(first)
	if len(parts) < 2 || parts[1] != "101" {
		return fmt.Errorf("handshake refused: %q", first)
	}
	if headers["sec-websocket-accept"] != AcceptFor(key) {
		return errors.New("handshake: wrong Sec-WebSocket-Accept")
	}
	return nil
}

// AppendHeader appends a frame header (FIN set) for a payload of length bytes, with mask when non-nil.
func AppendHeader(buf []byte, opcode byte, length int, mask []byte) []byte {
	var maskBit byte
	if mask != nil {
		maskBit = 0x80
	}
	buf = append(buf, 0x80|opcode)
	switch {
	case length < 126:
		buf = append(buf, maskBit|byte(length))
	case length < 1<<16:
		buf = append(buf, maskBit|126)
		buf = binary.BigEndian.AppendUint16(buf, uint16(length))
	default:
		buf = append(buf, maskBit|127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(length))
	}
	return append(buf, mask...)
}

// AppendServerFrame appends an unmasked frame (server to client).
func AppendServerFrame(buf []byte, opcode byte, payload []byte) []byte {
	return append(AppendHeader(buf, opcode, len(payload), nil), payload...)
}

// ClientFrame is a masked frame (client to server).
func ClientFrame(opcode byte, payload, mask []byte) []byte {
	buf := AppendHeader(make([]byte, 0, 14+len(payload)), opcode, len(payload), mask)
	start := len(buf)
	buf = append(buf, payload...)
	Mask(buf[start:], mask, 0)
	return buf
}

// Mask XORs b in place with the 4-byte key, b starting at offset pos of the payload.
func Mask(b, key []byte, pos int) {
	var k [8]byte
	for i := range k {
		k[i] = key[(pos+i)&3]
	}
	k8 := binary.LittleEndian.Uint64(k[:])
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^k8)
	}
	for ; i < len(b); i++ {
		b[i] ^= k[i&7]
	}
}

// ClosePayload is a close frame's payload: the code and the reason (at most 120 bytes).
func ClosePayload(code int, reason string) []byte {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason...)
}

// CloseCode is the code of a close frame's payload (1005 when it has none).
func CloseCode(payload []byte) int {
	if len(payload) < 2 {
		return 1005
	}
	return int(binary.BigEndian.Uint16(payload))
}

// Parser cuts whole messages out of the bytes read from a connection: control
// frames as they come (also between fragments), fragmented data messages
// reassembled.
type Parser struct {
	ExpectMasked bool // a server expects masked frames, a client unmasked ones
	fragments    []byte
	fragmentOp   byte
}

// Next takes the first frame of buf and returns its message: the opcode and
// the payload (unmasked in place in buf, or reassembled; valid until buf
// changes or the next call), and n, the bytes of buf the frame took. n == 0
// (and no error) means buf does not hold a whole frame yet; op == OpCont
// means the frame was a fragment that does not end its message.
func (p *Parser) Next(buf []byte) (op byte, payload []byte, n int, err error) {
	if len(buf) < 2 {
		return 0, nil, 0, nil
	}
	fin, opcode, masked, length := buf[0]&0x80 != 0, buf[0]&0x0F, buf[1]&0x80 != 0, uint64(buf[1]&0x7F)
	if masked != p.ExpectMasked {
		return 0, nil, 0, fmt.Errorf("%w: frame masking is wrong for this direction", ErrProtocol)
	}
	head := 2
	switch length {
	case 126:
		if len(buf) < 4 {
			return 0, nil, 0, nil
		}
		length, head = uint64(binary.BigEndian.Uint16(buf[2:4])), 4
	case 127:
		if len(buf) < 10 {
			return 0, nil, 0, nil
		}
		length, head = binary.BigEndian.Uint64(buf[2:10]), 10
	}
	if length > MaxMessageBytes {
		return 0, nil, 0, fmt.Errorf("%w: frame of %d bytes", ErrProtocol, length)
	}
	if masked {
		head += 4
	}
	if len(buf) < head+int(length) {
		return 0, nil, 0, nil
	}
	n = head + int(length)
	payload = buf[head:n]
	if masked {
		Mask(payload, buf[head-4:head], 0)
	}
	switch {
	case opcode >= 0x8:
		return opcode, payload, n, nil
	case opcode == OpCont:
		p.fragments = append(p.fragments, payload...)
		if !fin {
			return OpCont, nil, n, nil
		}
		return p.fragmentOp, p.fragments, n, nil
	case !fin:
		p.fragmentOp = opcode
		p.fragments = append(p.fragments[:0], payload...)
		return OpCont, nil, n, nil
	}
	return opcode, payload, n, nil
}
