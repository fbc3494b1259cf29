package ferromq.interop;

import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A deliberately small STOMP 1.1 client over a raw socket, used by the cross-protocol tests.
 * Header values are escaped/unescaped as STOMP 1.1 requires; a body is read by content-length when
 * the header is present, up to the first NUL otherwise.
 */
final class StompClient implements Closeable {

    static final class Frame {
        final String command;
        /** Headers in wire order; for a repeated header the first occurrence wins (STOMP 1.1). */
        final Map<String, String> headers;
        final byte[] body;

        Frame(String command, Map<String, String> headers, byte[] body) {
            this.command = command;
            this.headers = headers;
            this.body = body;
        }

        String header(String name) {
            return headers.get(name);
        }

        String bodyText() {
            return new String(body, StandardCharsets.UTF_8);
        }

        @Override
        public String toString() {
            StringBuilder sb = new StringBuilder(command).append(' ').append(headers);
            sb.append(" body[").append(body.length).append("]=");
            String text = bodyText();
            sb.append(text.length() > 200 ? text.substring(0, 200) + "..." : text);
            return sb.toString();
        }
    }

    private final Socket socket;
    private final InputStream in;
    private final OutputStream out;
    private int receiptCounter;

    private StompClient(Socket socket) throws IOException {
        this.socket = socket;
        this.in = new BufferedInputStream(socket.getInputStream(), 65536);
        this.out = socket.getOutputStream();
    }

    /** Opens a socket, sends CONNECT (version 1.1, no heart-beats) and waits for CONNECTED. */
    static StompClient connect(String host, int port, long timeoutMs) throws IOException {
        Socket s = new Socket();
        try {
            s.connect(new InetSocketAddress(host, port), (int) timeoutMs);
            s.setTcpNoDelay(true);
            StompClient c = new StompClient(s);
            Map<String, String> h = new LinkedHashMap<>();
            h.put("accept-version", "1.1");
            h.put("host", "localhost");
            h.put("heart-beat", "0,0");
            c.send("CONNECT", h, null);
            Frame f = c.receive(timeoutMs);
            if (f == null) {
                throw new IOException("no CONNECTED frame within " + timeoutMs + " ms from STOMP " + host + ":" + port);
            }
            if (!"CONNECTED".equals(f.command)) {
                throw new IOException("expected CONNECTED from STOMP " + host + ":" + port + ", got " + f);
            }
            return c;
        } catch (IOException | RuntimeException e) {
            try {
                s.close();
            } catch (IOException ignored) {
                // closing after a failure
            }
            throw e;
        }
    }

    /** Writes one frame. CONNECT headers are not escaped (STOMP 1.1). {@code body} may be null. */
    synchronized void send(String command, Map<String, String> headers, byte[] body) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        buf.write(command.getBytes(StandardCharsets.UTF_8));
        buf.write('\n');
        boolean escape = !"CONNECT".equals(command) && !"STOMP".equals(command);
        for (Map.Entry<String, String> e : headers.entrySet()) {
            String k = escape ? escapeHeader(e.getKey()) : e.getKey();
            String v = escape ? escapeHeader(e.getValue()) : e.getValue();
            buf.write((k + ":" + v).getBytes(StandardCharsets.UTF_8));
            buf.write('\n');
        }
        buf.write('\n');
        if (body != null) {
            buf.write(body);
        }
        buf.write(0);
        out.write(buf.toByteArray());
        out.flush();
    }

    /**
     * Sends a frame with a {@code receipt} header and waits for its RECEIPT. Frames of other kinds
     * arriving meanwhile are a failure (the tests only use this before any MESSAGE is expected).
     */
    void sendWithReceipt(String command, Map<String, String> headers, byte[] body, long timeoutMs) throws IOException {
        String receipt = "rcpt-" + (++receiptCounter);
        Map<String, String> h = new LinkedHashMap<>(headers);
        h.put("receipt", receipt);
        send(command, h, body);
        Frame f = receive(timeoutMs);
        if (f == null) {
            throw new IOException("no RECEIPT for " + command + " within " + timeoutMs + " ms");
        }
        if (!"RECEIPT".equals(f.command) || !receipt.equals(f.header("receipt-id"))) {
            throw new IOException("expected RECEIPT receipt-id:" + receipt + " for " + command + ", got " + f);
        }
    }

    /** Reads the next frame, or returns null when none starts within {@code timeoutMs}. */
    Frame receive(long timeoutMs) throws IOException {
        socket.setSoTimeout((int) Math.max(1, timeoutMs));
        int b;
        try {
            // Skip EOLs between frames (heart-beats, trailing newlines after NUL).
            do {
                b = in.read();
                if (b < 0) {
                    throw new EOFException("STOMP connection closed by the broker");
                }
            } while (b == '\n' || b == '\r');
        } catch (SocketTimeoutException e) {
            return null;
        }
        // The frame has started: allow a generous time for the rest.
        socket.setSoTimeout(30000);
        ByteArrayOutputStream line = new ByteArrayOutputStream();
        line.write(b);
        String command = readLine(line);
        Map<String, String> headers = new LinkedHashMap<>();
        while (true) {
            String h = readLine(new ByteArrayOutputStream());
            if (h.isEmpty()) {
                break;
            }
            int colon = h.indexOf(':');
            if (colon < 0) {
                throw new IOException("malformed STOMP header line: " + h);
            }
            boolean escaped = !"CONNECTED".equals(command);
            String k = escaped ? unescapeHeader(h.substring(0, colon)) : h.substring(0, colon);
            String v = escaped ? unescapeHeader(h.substring(colon + 1)) : h.substring(colon + 1);
            headers.putIfAbsent(k, v);
        }
        byte[] body;
        String cl = headers.get("content-length");
        if (cl != null) {
            int n = Integer.parseInt(cl.trim());
            body = new byte[n];
            int off = 0;
            while (off < n) {
                int r = in.read(body, off, n - off);
                if (r < 0) {
                    throw new EOFException("STOMP connection closed inside a body");
                }
                off += r;
            }
            int nul = in.read();
            if (nul != 0) {
                throw new IOException("STOMP body of content-length " + n + " not followed by NUL (got " + nul + ")");
            }
        } else {
            ByteArrayOutputStream bb = new ByteArrayOutputStream();
            while (true) {
                int c = in.read();
                if (c < 0) {
                    throw new EOFException("STOMP connection closed inside a body");
                }
                if (c == 0) {
                    break;
                }
                bb.write(c);
            }
            body = bb.toByteArray();
        }
        return new Frame(command, headers, body);
    }

    /** Receives frames until one with the given command arrives; ERROR frames fail at once. */
    Frame expect(String command, long timeoutMs) throws IOException {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (true) {
            long left = deadline - System.currentTimeMillis();
            if (left <= 0) {
                return null;
            }
            Frame f = receive(left);
            if (f == null) {
                return null;
            }
            if (f.command.equals(command)) {
                return f;
            }
            if ("ERROR".equals(f.command)) {
                throw new IOException("STOMP ERROR frame while waiting for " + command + ": " + f);
            }
        }
    }

    private String readLine(ByteArrayOutputStream line) throws IOException {
        while (true) {
            int c = in.read();
            if (c < 0) {
                throw new EOFException("STOMP connection closed inside a frame header");
            }
            if (c == '\n') {
                break;
            }
            line.write(c);
        }
        byte[] bytes = line.toByteArray();
        int len = bytes.length;
        if (len > 0 && bytes[len - 1] == '\r') {
            len--;
        }
        return new String(bytes, 0, len, StandardCharsets.UTF_8);
    }

    static String escapeHeader(String s) {
        StringBuilder sb = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case ':': sb.append("\\c"); break;
                default: sb.append(c);
            }
        }
        return sb.toString();
    }

    static String unescapeHeader(String s) {
        if (s.indexOf('\\') < 0) {
            return s;
        }
        StringBuilder sb = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '\\' && i + 1 < s.length()) {
                char n = s.charAt(++i);
                switch (n) {
                    case '\\': sb.append('\\'); break;
                    case 'n': sb.append('\n'); break;
                    case 'c': sb.append(':'); break;
                    case 'r': sb.append('\r'); break;
                    default: sb.append('\\').append(n);
                }
            } else {
                sb.append(c);
            }
        }
        return sb.toString();
    }

    /** Sends DISCONNECT (best effort) and closes the socket. */
    @Override
    public void close() {
        try {
            if (!socket.isClosed()) {
                send("DISCONNECT", new LinkedHashMap<>(), null);
            }
        } catch (IOException ignored) {
            // the broker may already have gone
        }
        try {
            socket.close();
        } catch (IOException ignored) {
            // nothing more to do
        }
    }
}
