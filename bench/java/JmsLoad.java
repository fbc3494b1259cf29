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
// more (as fast as it can, same destination, same delivery mode), marked
// with the boolean property ferromq-warmup. A client JVM that has just
// started spends much of a short run compiling (on a 2-core machine the JIT
// threads take a quarter of it): the warm-up lets the JIT finish before the
// measured part, so the figures are those of a running application. Warm-up
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
                for (long i = 0; i < w; i++) {
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    m.setBooleanProperty("ferromq-warmup", true);
                    m.setLongProperty("ferromq-sent-ns", nowNs());
                    p.send(m);
                }
                // The consumer catches up with the warm-up before the measured part.
                if (warmup > 0) Thread.sleep(300);
                warm.await();
                double per = rate > 0 ? rate / clients : 0;
                long start = System.nanoTime();
                for (long i = 0; i < n; i++) {
                    if (per > 0) {
                        long due = start + (long) (i * 1e9 / per);
                        long wait = due - System.nanoTime();
                        if (wait > 0) LockSupport_parkNanos(wait);
                    }
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    m.setLongProperty("ferromq-sent-ns", nowNs());
                    p.send(m);
                    sent.incrementAndGet();
                }
                con.close();
                return null;
            }));
        }
        for (Future<?> x : fs) x.get();
        double secs = (System.nanoTime() - t0.get()) / 1e9;
        System.out.printf(Locale.ROOT, "{\"role\":\"producer\",\"messages\":%d,\"seconds\":%.3f,\"messages_per_second\":%.1f}%n", sent.get(), secs, sent.get() / secs);
        ex.shutdown();
    }

    static void LockSupport_parkNanos(long ns) { java.util.concurrent.locks.LockSupport.parkNanos(ns); }

    static void consume(String url, String d, long count, int clients, long warmup) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        boolean topic = d.startsWith("topic://");
        long goal = topic ? count * clients : count;
        long all = topic ? (count + warmup) * clients : count + warmup;
        long warmAll = topic ? warmup * clients : warmup;
        AtomicLong got = new AtomicLong(), warmed = new AtomicLong(), total = new AtomicLong();
        AtomicLong first = new AtomicLong();
        CountDownLatch done = new CountDownLatch(1);
        long[] lat = new long[(int) Math.min(goal, 20_000_000)];
        AtomicInteger li = new AtomicInteger();
        List<Connection> cons = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            Connection con = f.createConnection();
            cons.add(con);
            Session s = con.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(dest(s, d));
            mc.setMessageListener(m -> {
                long now = nowNs();
                try {
                    if (m.getBooleanProperty("ferromq-warmup")) {
                        warmed.incrementAndGet();
                    } else {
                        first.compareAndSet(0, System.nanoTime());
                        got.incrementAndGet();
                        // Not while warm-up messages are still ahead (waiting behind them).
                        if (warmed.get() >= warmAll) {
                            long sentNs = m.getLongProperty("ferromq-sent-ns");
                            int i = li.getAndIncrement();
                            if (i < lat.length) lat[i] = Math.max(1, (now - sentNs) / 1000);
                        }
                    }
                } catch (JMSException e) { }
                if (total.incrementAndGet() >= all) done.countDown();
            });
            con.start();
        }
        System.err.println("consumer ready");
        done.await(600, TimeUnit.SECONDS);
        double secs = (System.nanoTime() - first.get()) / 1e9;
        int n = Math.min(li.get(), lat.length);
        long[] l = Arrays.copyOf(lat, n);
        Arrays.sort(l);
        long p50 = n > 0 ? l[(int) (n * 0.50)] : 0, p99 = n > 0 ? l[Math.min(n - 1, (int) (n * 0.99))] : 0, max = n > 0 ? l[n - 1] : 0;
        System.out.printf(Locale.ROOT, "{\"role\":\"consumer\",\"messages\":%d,\"warmup\":%d,\"seconds\":%.3f,\"messages_per_second\":%.1f,\"latency\":{\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d}}%n", got.get(), warmed.get(), secs, got.get() / secs, p50, p99, max);
        for (Connection con : cons) con.close();
    }
}
