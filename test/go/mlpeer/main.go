// mlpeer: a hashicorp/memberlist peer for oklog's gossip interop tests. It gossips OK Log's peer
// map exactly as OK Log's pkg/cluster delegate does (JSON in the push/pull local state, union merge,
// entry removed on leave), prints membership events as JSON lines on stdout and obeys commands on
// stdin: "members", "leave", "quit".
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build -o mlpeer main.go
package main

import (
	"bufio"
	"bytes"
	"compress/lzw"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/codec"
	"github.com/hashicorp/memberlist"
)

// Copies of memberlist's (unexported) wire structs, encoded the way memberlist encodes them, so
// the tests can compare our encoder with Go's byte for byte.
type ping struct {
	SeqNo      uint32
	Node       string
	SourceAddr []byte `codec:",omitempty"`
	SourcePort uint16 `codec:",omitempty"`
	SourceNode string `codec:",omitempty"`
}
type indirectPingReq struct {
	SeqNo      uint32
	Target     []byte
	Port       uint16
	Node       string
	Nack       bool
	SourceAddr []byte `codec:",omitempty"`
	SourcePort uint16 `codec:",omitempty"`
	SourceNode string `codec:",omitempty"`
}
type ackResp struct {
	SeqNo   uint32
	Payload []byte
}
type nackResp struct{ SeqNo uint32 }
type suspect struct {
	Incarnation uint32
	Node        string
	From        string
}
type alive struct {
	Incarnation uint32
	Node        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Vsn         []uint8
}
type dead struct {
	Incarnation uint32
	Node        string
	From        string
}
type pushPullHeader struct {
	Nodes        int
	UserStateLen int
	Join         bool
}
type pushNodeState struct {
	Name        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Incarnation uint32
	State       int
	Vsn         []uint8
}

func encodeHex(t uint8, v interface{}) string {
	buf := bytes.NewBuffer([]byte{t})
	hd := codec.MsgpackHandle{}
	if err := codec.NewEncoder(buf, &hd).Encode(v); err != nil {
		return "error: " + err.Error()
	}
	return hex.EncodeToString(buf.Bytes())
}

func wireSamples() map[string]interface{} {
	ip := []byte{127, 0, 0, 1}
	vsn := []uint8{1, 5, 2, 0, 0, 0}
	return map[string]interface{}{
		"ev":             "wire",
		"ping":           encodeHex(0, &ping{SeqNo: 1, Node: "b", SourceAddr: ip, SourcePort: 7946, SourceNode: "a"}),
		"pingBare":       encodeHex(0, &ping{SeqNo: 300, Node: "node-b"}),
		"indirectPing":   encodeHex(1, &indirectPingReq{SeqNo: 70000, Target: ip, Port: 7946, Node: "c", Nack: true, SourceAddr: ip, SourcePort: 7947, SourceNode: "a"}),
		"ack":            encodeHex(2, &ackResp{SeqNo: 5, Payload: nil}),
		"nack":           encodeHex(11, &nackResp{SeqNo: 5}),
		"suspect":        encodeHex(3, &suspect{Incarnation: 3, Node: "b", From: "a"}),
		"alive":          encodeHex(4, &alive{Incarnation: 1, Node: "a", Addr: ip, Port: 7946, Meta: []byte("{}"), Vsn: vsn}),
		"dead":           encodeHex(5, &dead{Incarnation: 9, Node: "b", From: "b"}),
		"pushPullHeader": encodeHex(6, &pushPullHeader{Nodes: 2, UserStateLen: 100, Join: true}),
		"pushNodeState":  encodeHex(6, &pushNodeState{Name: "a", Addr: ip, Port: 7946, Meta: nil, Incarnation: 2, State: 3, Vsn: vsn}),
	}
}

func lzwHex(compress bool, in string) map[string]interface{} {
	data, err := hex.DecodeString(in)
	if err != nil {
		return map[string]interface{}{"ev": "lzw", "err": err.Error()}
	}
	var out bytes.Buffer
	if compress {
		w := lzw.NewWriter(&out, lzw.LSB, 8)
		w.Write(data)
		w.Close()
	} else {
		r := lzw.NewReader(bytes.NewReader(data), lzw.LSB, 8)
		if _, err := out.ReadFrom(r); err != nil {
			return map[string]interface{}{"ev": "lzw", "err": err.Error()}
		}
	}
	return map[string]interface{}{"ev": "lzw", "out": hex.EncodeToString(out.Bytes())}
}

type peerInfo struct {
	Type    string `json:"type"`
	APIAddr string `json:"api_addr"`
	APIPort int    `json:"api_port"`
}

var outMu sync.Mutex

func emit(v map[string]interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// delegate is OK Log's pkg/cluster delegate.
type delegate struct {
	mtx  sync.RWMutex
	data map[string]peerInfo
}

func (d *delegate) NodeMeta(limit int) []byte { return []byte{} }

func (d *delegate) merge(b []byte) {
	if len(b) == 0 {
		return
	}
	var data map[string]peerInfo
	if err := json.Unmarshal(b, &data); err != nil {
		emit(map[string]interface{}{"ev": "merge_error", "err": err.Error()})
		return
	}
	d.mtx.Lock()
	for k, v := range data {
		d.data[k] = v
	}
	d.mtx.Unlock()
}

func (d *delegate) NotifyMsg(b []byte)                         { d.merge(b) }
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte {
	d.mtx.RLock()
	defer d.mtx.RUnlock()
	buf, _ := json.Marshal(d.data)
	return buf
}
func (d *delegate) MergeRemoteState(buf []byte, join bool) { d.merge(buf) }

func (d *delegate) snapshot() map[string]peerInfo {
	d.mtx.RLock()
	defer d.mtx.RUnlock()
	out := map[string]peerInfo{}
	for k, v := range d.data {
		out[k] = v
	}
	return out
}

type events struct{ d *delegate }

func node(ev string, n *memberlist.Node) map[string]interface{} {
	return map[string]interface{}{"ev": ev, "name": n.Name, "addr": n.Addr.String(), "port": n.Port, "meta": string(n.Meta)}
}

func (e *events) NotifyJoin(n *memberlist.Node)   { emit(node("join", n)) }
func (e *events) NotifyUpdate(n *memberlist.Node) { emit(node("update", n)) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.d.mtx.Lock()
	delete(e.d.data, n.Name)
	e.d.mtx.Unlock()
	emit(node("leave", n))
}

func main() {
	name := flag.String("name", "", "member name")
	bind := flag.String("bind", "127.0.0.1", "bind address")
	port := flag.Int("port", 0, "bind port (0: any)")
	join := flag.String("join", "", "comma-separated seeds")
	key := flag.String("key", "", "base64 AES key (16/24/32 bytes)")
	typ := flag.String("type", "store", "OK Log peer type")
	apiAddr := flag.String("api-addr", "127.0.0.1", "API address gossiped")
	apiPort := flag.Int("api-port", 7650, "API port gossiped")
	probeInterval := flag.Duration("probe-interval", time.Second, "")
	probeTimeout := flag.Duration("probe-timeout", 500*time.Millisecond, "")
	gossipInterval := flag.Duration("gossip-interval", 200*time.Millisecond, "")
	pushPull := flag.Duration("pushpull-interval", 30*time.Second, "")
	suspicionMult := flag.Int("suspicion-mult", 4, "")
	verbose := flag.Bool("v", false, "memberlist logs on stderr")
	flag.Parse()

	d := &delegate{data: map[string]peerInfo{}}
	d.data[*name] = peerInfo{Type: *typ, APIAddr: *apiAddr, APIPort: *apiPort}

	c := memberlist.DefaultLANConfig()
	c.Name = *name
	c.BindAddr = *bind
	c.BindPort = *port
	c.AdvertiseAddr = *bind
	c.AdvertisePort = *port
	c.Delegate = d
	c.Events = &events{d: d}
	c.ProbeInterval = *probeInterval
	c.ProbeTimeout = *probeTimeout
	c.GossipInterval = *gossipInterval
	c.PushPullInterval = *pushPull
	c.SuspicionMult = *suspicionMult
	c.TCPTimeout = 2 * time.Second
	if *verbose {
		c.LogOutput = os.Stderr
	} else {
		c.LogOutput = ioutil.Discard
	}
	if *key != "" {
		k, err := base64.StdEncoding.DecodeString(*key)
		if err != nil {
			log.Fatalf("bad key: %v", err)
		}
		c.SecretKey = k
	}
	m, err := memberlist.Create(c)
	if err != nil {
		log.Fatalf("create: %v", err)
	}
	local := m.LocalNode()
	emit(map[string]interface{}{"ev": "ready", "name": local.Name, "addr": local.Addr.String(), "port": local.Port})
	if *join != "" {
		n, err := m.Join(strings.Split(*join, ","))
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		emit(map[string]interface{}{"ev": "joined", "n": n, "err": msg})
	}

	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "lzw-c") || strings.HasPrefix(line, "lzw-d") {
			emit(lzwHex(strings.HasPrefix(line, "lzw-c"), strings.TrimSpace(line[5:])))
			continue
		}
		switch line {
		case "wire":
			emit(wireSamples())
		case "members":
			var ms []map[string]interface{}
			for _, n := range m.Members() {
				ms = append(ms, map[string]interface{}{"name": n.Name, "addr": n.Addr.String(), "port": n.Port, "meta": string(n.Meta)})
			}
			emit(map[string]interface{}{"ev": "members", "members": ms, "peers": d.snapshot(), "n": m.NumMembers()})
		case "leave":
			err := m.Leave(time.Second)
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			emit(map[string]interface{}{"ev": "left", "err": msg})
		case "quit":
			m.Shutdown()
			os.Exit(0)
		}
	}
	m.Shutdown()
}
