package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// floorReaderCmd is the hidden subcommand that floor runs as its reading child process.
const floorReaderCmd = "floor-reader"

// FloorResult is the writer's CPU per frame for one socket count and frames per write.
type FloorResult struct {
	Sockets        int     `json:"sockets"`
	FramesPerWrite int     `json:"frames_per_write"`
	FrameBytes     int     `json:"frame_bytes"`
	Frames         int64   `json:"frames"`
	Writes         int64   `json:"writes"`
	Seconds        float64 `json:"seconds"`
	WriterCPUUS    float64 `json:"writer_cpu_per_frame_us"`
	WriterCPUWrite float64 `json:"writer_cpu_per_write_us"`
	ReaderCPUUS    float64 `json:"reader_cpu_per_frame_us"`
	Reader         string  `json:"reader"`
}

func floorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("herald-bench floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sockets := fs.String("sockets", "1000,10000", "comma-separated socket counts")
	batches := fs.String("batch", "1,4,16", "comma-separated frames per write")
	frameBytes := fs.Int("frame-bytes", 160, "bytes of each WebSocket frame, header included (2 to 125+2)")
	fps := fs.Int("frames-per-sec", 50000, "frames written per second in all (paced, as a gateway's fan-out would be)")
	duration := fs.Duration("duration", 5*time.Second, "how long each measurement writes")
	sourceAddrs := fs.Int("source-addrs", 16, "the reader dials from 127.0.0.2 .. 127.0.0.(1+n) in turn")
	reader := fs.String("reader", "epoll", "how the reading process reads: epoll (as the load tool's receivers do: two threads, each waiting in epoll_wait on its half of the sockets) or goroutine (one goroutine per socket, through Go's poller)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	quiet := fs.Float64("quiet-below", 20, "before each measurement, wait (up to 3 minutes) until the machine is less busy than this percent (0: don't wait)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: herald-bench floor [flags]\n\nThe kernel's floor: the CPU a process spends writing one WebSocket frame to each of N loopback\n"+
			"sockets read by another process (this program, started again as the reader), from getrusage of\n"+
			"the writer, divided by the frames written. Over loopback the writer pays for both ends of TCP.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *frameBytes < 3 || *frameBytes > 65535 {
		fmt.Fprintln(stderr, "herald-bench floor: -frame-bytes must be 3 to 65535")
		return errUsage
	}
	if *reader != "epoll" && *reader != "goroutine" {
		fmt.Fprintln(stderr, "herald-bench floor: -reader must be epoll or goroutine")
		return errUsage
	}
	ns, err1 := intList(*sockets)
	bs, err2 := intList(*batches)
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintf(stderr, "herald-bench floor: %v\n", err)
		return errUsage
	}
	var results []FloorResult
	for _, n := range ns {
		rs, err := floorSockets(ctx, n, bs, *frameBytes, *fps, *duration, *sourceAddrs, *reader, *quiet, stderr)
		results = append(results, rs...)
		if err != nil {
			return err
		}
	}
	if *asJSON {
		return writeJSON(stdout, results)
	}
	printFloor(stdout, results)
	return nil
}

func printFloor(w io.Writer, results []FloorResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sockets\treader\tframes/write\tframe bytes\tframes\twriter us/frame\twriter us/write\treader us/frame\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t\n", r.Sockets, r.Reader, r.FramesPerWrite, r.FrameBytes, r.Frames, r.WriterCPUUS, r.WriterCPUWrite, r.ReaderCPUUS)
	}
	tw.Flush()
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// floorSockets connects n sockets to a reader child process and measures each batch size.
func floorSockets(ctx context.Context, n int, batches []int, frameBytes, fps int, d time.Duration, sourceAddrs int, reader string, quietBelow float64, stderr io.Writer) ([]FloorResult, error) {
	if need := n + 64; need > noFileLimit() {
		return nil, fmt.Errorf("%d sockets need %d descriptors; the limit is %d", n, need, noFileLimit())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	child := exec.CommandContext(ctx, self, floorReaderCmd, "-addr", ln.Addr().String(), "-n", strconv.Itoa(n),
		"-source-addrs", strconv.Itoa(sourceAddrs), "-reader", reader)
	child.Stderr = stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := child.Start(); err != nil {
		return nil, fmt.Errorf("start reader: %w", err)
	}
	defer func() {
		stdin.Close() // the reader exits when its stdin closes
		done := make(chan struct{})
		go func() { _ = child.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = child.Process.Kill()
			<-done
		}
	}()

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for len(conns) < n {
		_ = ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("accept %d of %d: %w", len(conns), n, err)
		}
		conns = append(conns, c)
	}
	fmt.Fprintf(stderr, "floor: %d sockets connected to reader pid %d\n", n, child.Process.Pid)
	time.Sleep(500 * time.Millisecond)

	frame := wsFrame(frameBytes)
	var results []FloorResult
	for _, b := range batches {
		buf := make([]byte, 0, b*frameBytes)
		for range b {
			buf = append(buf, frame...)
		}
		if quietBelow > 0 {
			// The reader and the sockets are idle now: what is busy is other work.
			if pct, ok := waitQuiet(ctx, quietBelow, 3*time.Minute, func(pct float64) {
				fmt.Fprintf(stderr, "waiting for a quiet machine: %.0f%% busy\n", pct)
			}); !ok {
				fmt.Fprintf(stderr, "warning: the machine is %.0f%% busy with other work: measuring anyway\n", pct)
			}
		}
		r, err := floorMeasure(ctx, conns, buf, b, fps, d, child.Process.Pid)
		if err != nil {
			return results, err
		}
		r.FrameBytes, r.Reader = frameBytes, reader
		fmt.Fprintf(stderr, "floor: %d sockets, %d frames/write: %.2f us/frame\n", n, b, r.WriterCPUUS)
		results = append(results, r)
	}
	return results, nil
}

// wsFrame returns an unmasked text frame (as a server sends) of size bytes, header included.
func wsFrame(size int) []byte {
	frame := make([]byte, size)
	hdr := 2
	if payload := size - 2; payload <= 125 {
		frame[0], frame[1] = 0x81, byte(payload) // FIN, text; 7-bit length
	} else {
		payload = size - 4
		frame[0], frame[1], frame[2], frame[3] = 0x81, 126, byte(payload>>8), byte(payload) // 16-bit length
		hdr = 4
	}
	for i := hdr; i < size; i++ {
		frame[i] = 'x'
	}
	return frame
}

// floorMeasure writes buf (b frames) to every socket in turn, round after round, paced
// to fps frames per second, for d; it returns the CPU this process used per frame.
func floorMeasure(ctx context.Context, conns []net.Conn, buf []byte, b, fps int, d time.Duration, readerPID int) (FloorResult, error) {
	r := FloorResult{Sockets: len(conns), FramesPerWrite: b}
	round := time.Duration(float64(time.Second) * float64(len(conns)*b) / float64(fps))
	// One unmeasured round, so that every socket has its buffers.
	for _, c := range conns {
		if _, err := c.Write(buf); err != nil {
			return r, err
		}
	}
	time.Sleep(round)
	reader0, _ := readProc(readerPID)
	cpu0 := selfCPU()
	start := time.Now()
	next := start
	for time.Since(start) < d && ctx.Err() == nil {
		for _, c := range conns {
			if _, err := c.Write(buf); err != nil {
				return r, err
			}
		}
		r.Writes += int64(len(conns))
		next = next.Add(round)
		time.Sleep(time.Until(next))
	}
	cpu := selfCPU() - cpu0
	r.Seconds = time.Since(start).Seconds()
	time.Sleep(200 * time.Millisecond) // let the reader finish reading
	reader1, _ := readProc(readerPID)
	r.Frames = r.Writes * int64(b)
	r.WriterCPUUS = float64(cpu.Nanoseconds()) / 1e3 / float64(r.Frames)
	r.WriterCPUWrite = float64(cpu.Nanoseconds()) / 1e3 / float64(r.Writes)
	r.ReaderCPUUS = float64((reader1.cpu - reader0.cpu).Nanoseconds()) / 1e3 / float64(r.Frames)
	return r, ctx.Err()
}

// floorReader is the child process of floor: it dials n connections to addr, reads them
// all and discards what it reads, until its stdin closes.
func floorReader(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(floorReaderCmd, flag.ContinueOnError)
	addr := fs.String("addr", "", "address to dial")
	n := fs.Int("n", 0, "connections")
	sourceAddrs := fs.Int("source-addrs", 16, "source addresses")
	reader := fs.String("reader", "epoll", "epoll or goroutine")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if _, _, err := loopbackTarget(*addr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // the parent closes our stdin when it is done, or dies
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		cancel()
	}()
	sd := newSourceDialer(2, *sourceAddrs)
	var conns []net.Conn
	for i := 0; i < *n; i++ {
		c, err := sd.DialContext(ctx, "tcp", *addr)
		if err != nil {
			return fmt.Errorf("reader: dial %d of %d: %w", i, *n, err)
		}
		conns = append(conns, c)
	}
	if *reader == "epoll" {
		return readEpoll(ctx, conns)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		})
	}
	<-ctx.Done()
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	return nil
}

// readEpoll reads conns the way the load tool's receivers do (epollReceivers): their
// sockets taken over as raw descriptors, split between two goroutines, each waiting in
// epoll_wait on its half and reading every socket that is ready once; until ctx ends.
func readEpoll(ctx context.Context, conns []net.Conn) error {
	var loops [2]int
	for i := range loops {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("epoll_create1: %w", err)
		}
		defer syscall.Close(epfd)
		loops[i] = epfd
	}
	for i, c := range conns {
		fd, err := takeFD(c)
		if err != nil {
			return err
		}
		c.Close()
		defer syscall.Close(fd)
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
		if err := syscall.EpollCtl(loops[i%2], syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	var wg sync.WaitGroup
	for _, epfd := range loops {
		wg.Go(func() {
			events := make([]syscall.EpollEvent, 256)
			buf := make([]byte, 256<<10)
			for ctx.Err() == nil {
				n, err := syscall.EpollWait(epfd, events, 100)
				if err != nil && !errors.Is(err, syscall.EINTR) {
					return
				}
				for _, ev := range events[:max(n, 0)] {
					m, err := syscall.Read(int(ev.Fd), buf)
					if (m == 0 && err == nil) || (err != nil && !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR)) {
						// The writer closed it, or it failed: level-triggered, it would be ready forever.
						_ = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, int(ev.Fd), nil)
					}
				}
			}
		})
	}
	wg.Wait()
	return nil
}
