// A JMS load program for the side-by-side benchmark: the stock ActiveMQ
// client (Debian's libactivemq-java), one role per process.
//
//   java JmsLoad producer URL DEST COUNT SIZE PERSISTENT(true|false) RATE(msgs/s, 0 = max) CLIENTS WARMUP
//   java JmsLoad consumer URL DEST COUNT CLIENTS WARMUP
//
// DEST is queue://NAME or topic://NAME. Each message carries its send time
// (long property ferromq-sent-ns, wall clock in ns) so the consumer reports
// end-to-end latency. Prints one JSON line.
//
// Warm-up: before the COUNT measured messages the producer sends WARMUP
// more (same destination, same delivery mode), marked with the int property
// ferromq-phase = 0 (measured ones carry 1). A client JVM that has just
// started spends much of a short run compiling (on a 2-core machine the JIT
// threads take a quarter of it): the warm-up lets the JIT finish before the
// measured part, so the figures are those of a running application.
// Warm-up and measured messages go through the same code (the same send
// loop, paced when the run is, the same listener branches), and a warm-up
// is long enough to carry producer sequence numbers past 65 535: otherwise
// the measured part takes paths the JIT has not seen, and its code is
// thrown away and recompiled in the middle of it (a burst of milliseconds
// late messages, which dominated the p99 of the latency run). Warm-up
// messages count in neither rates nor latencies; the consumer reports how
// many it got ("warmup"), so that the broker's CPU can be divided by all the
// messages it moved.
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

public class JmsLoad {
    static Destination dest(Session s, String d) throws JMSException {
        if (d.startsWith("topic://")) return s.createTopic(d.substring(8));
        return s.createQueue(d.startsWith("queue://") ? d.substring(8) : d);
    }

    // Wall-clock time in ns (microsecond resolution on Linux), comparable
    // between processes.
    static long nowNs() {
        java.time.Instant t = java.time.Instant.now();
        return t.getEpochSecond() * 1_000_000_000L + t.getNano();
    }

    public static void main(String[] a) throws Exception {
        String role = a[0], url = a[1], d = a[2];
        long count = Long.parseLong(a[3]);
        if (role.equals("producer")) produce(url, d, count, Integer.parseInt(a[4]), Boolean.parseBoolean(a[5]), Double.parseDouble(a[6]), Integer.parseInt(a[7]), Long.parseLong(a[8]));
        else consume(url, d, count, Integer.parseInt(a[4]), Long.parseLong(a[5]));
        System.exit(0);
    }

    static long share(long total, int clients, int c) {
        return total / clients + (c < total % clients ? 1 : 0);
    }

    static void produce(String url, String d, long count, int size, boolean persistent, double rate, int clients, long warmup) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        ExecutorService ex = Executors.newFixedThreadPool(clients);
        AtomicLong sent = new AtomicLong();
        // The measured part starts when every client is done with its warm-up.
        AtomicLong t0 = new AtomicLong();
        CyclicBarrier warm = new CyclicBarrier(clients, () -> t0.set(System.nanoTime()));
        List<Future<?>> fs = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            final long n = share(count, clients, c), w = share(warmup, clients, c);
            fs.add(ex.submit(() -> {
                Connection con = f.createConnection();
                con.start();
                Session s = con.createSession(false, Session.AUTO_ACKNOWLEDGE);
                MessageProducer p = s.createProducer(dest(s, d));
                p.setDeliveryMode(persistent ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT);
                byte[] body = new byte[size];
                Arrays.fill(body, (byte) 'x');
                double per = rate > 0 ? rate / clients : 0;
                // Paced like the measured part, a few times faster.
                sendAll(s, p, body, w, per * 4, 0, new AtomicLong());
                // The consumer catches up with the warm-up before the measured part.
                if (warmup > 0) Thread.sleep(300);
                warm.await();
                sendAll(s, p, body, n, per, 1, sent);
                con.close();
                return null;
            }));
        }
        for (Future<?> x : fs) x.get();
        double secs = (System.nanoTime() - t0.get()) / 1e9;
        System.out.printf(Locale.ROOT, "{\"role\":\"producer\",\"messages\":%d,\"seconds\":%.3f,\"messages_per_second\":%.1f}%n", sent.get(), secs, sent.get() / secs);
        ex.shutdown();
    }

    /** Sends `n` messages of phase `phase`, `per` a second (0: at once). */
    static void sendAll(Session s, MessageProducer p, byte[] body, long n, double per, int phase, AtomicLong sent) throws JMSException {
        long start = System.nanoTime();
        for (long i = 0; i < n; i++) {
            if (per > 0) {
                long due = start + (long) (i * 1e9 / per);
                long wait = due - System.nanoTime();
                if (wait > 0) java.util.concurrent.locks.LockSupport.parkNanos(wait);
            }
            BytesMessage m = s.createBytesMessage();
            m.writeBytes(body);
            m.setIntProperty("ferromq-phase", phase);
            m.setLongProperty("ferromq-sent-ns", nowNs());
            p.send(m);
            if (sent != null) sent.incrementAndGet();
        }
    }

    static void consume(String url, String d, long count, int clients, long warmup) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        boolean topic = d.startsWith("topic://");
        long goal = topic ? count * clients : count;
        long all = topic ? (count + warmup) * clients : count + warmup;
        long warmAll = topic ? warmup * clients : warmup;
        // Every message, in arrival order: its latency, arrival time and
        // phase. Nothing is decided per message (see the top); the figures
        // are worked out at the end.
        int cap = (int) Math.min(all, 20_000_000);
        long[] lat = new long[cap], at = new long[cap];
        byte[] phase = new byte[cap];
        AtomicInteger next = new AtomicInteger();
        CountDownLatch done = new CountDownLatch(1);
        List<Connection> cons = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            Connection con = f.createConnection();
            cons.add(con);
            Session s = con.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(dest(s, d));
            mc.setMessageListener(m -> {
                long now = nowNs();
                int i = next.getAndIncrement();
                try {
                    if (i < cap) {
                        lat[i] = Math.max(1, (now - m.getLongProperty("ferromq-sent-ns")) / 1000);
                        at[i] = now;
                        phase[i] = (byte) m.getIntProperty("ferromq-phase");
                    }
                } catch (JMSException e) { }
                if (i + 1 == all) done.countDown();
            });
            con.start();
        }
        System.err.println("consumer ready");
        done.await(600, TimeUnit.SECONDS);
        int n = Math.min(next.get(), cap);
        // Measured messages: rate from the first one's arrival to the last
        // arrival; latency only of those that arrived after the last warm-up
        // message (not while warm-up messages were still ahead of them).
        int lastWarm = -1;
        long got = 0, warmed = 0, firstAt = 0, lastAt = 0;
        for (int i = 0; i < n; i++) {
            if (phase[i] == 0) { lastWarm = i; warmed++; continue; }
            if (got++ == 0) firstAt = at[i];
            lastAt = at[i];
        }
        long[] l = new long[n];
        int k = 0;
        for (int i = lastWarm + 1; i < n; i++) if (phase[i] == 1) l[k++] = lat[i];
        l = Arrays.copyOf(l, k);
        Arrays.sort(l);
        double secs = Math.max(lastAt - firstAt, 1) / 1e9;
        long p50 = k > 0 ? l[(int) (k * 0.50)] : 0, p99 = k > 0 ? l[Math.min(k - 1, (int) (k * 0.99))] : 0, max = k > 0 ? l[k - 1] : 0;
        System.out.printf(Locale.ROOT, "{\"role\":\"consumer\",\"messages\":%d,\"warmup\":%d,\"seconds\":%.3f,\"messages_per_second\":%.1f,\"latency\":{\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d}}%n", got, warmed, secs, got / secs, p50, p99, max);
        for (Connection con : cons) con.close();
    }
}
