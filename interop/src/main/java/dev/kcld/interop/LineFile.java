package dev.kcld.interop;

import java.io.BufferedWriter;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.List;

/** An append-only file of JSON lines shared by all record processors; writes are whole lines under one lock. */
final class LineFile {
    private final String path;
    private final BufferedWriter out;

    LineFile(String path) throws IOException {
        this.path = path;
        this.out = new BufferedWriter(
                new OutputStreamWriter(new FileOutputStream(path, true), StandardCharsets.UTF_8), 1 << 16);
    }

    /** Appends the lines and flushes them to the file. */
    synchronized void append(List<String> lines) {
        if (lines.isEmpty()) {
            return;
        }
        try {
            for (String line : lines) {
                out.write(line);
                out.write('\n');
            }
            out.flush();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write " + path, e);
        }
    }

    synchronized void append(String line) {
        try {
            out.write(line);
            out.write('\n');
            out.flush();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write " + path, e);
        }
    }

    synchronized void close() {
        try {
            out.close();
        } catch (IOException e) {
            // nothing left to do
        }
    }
}
