package dev.kcld.interop;

/** Environment variables with checked conversions. */
final class Env {
    static final class UsageException extends RuntimeException {
        UsageException(String message) {
            super(message);
        }
    }

    boolean has(String name) {
        String v = System.getenv(name);
        return v != null && !v.isEmpty();
    }

    String get(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    String required(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new UsageException(name + " is required");
        }
        return v;
    }

    /** A non-negative integer, or dflt when unset. */
    long positiveLong(String name, long dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            return dflt;
        }
        try {
            long n = Long.parseLong(v.trim());
            if (n < 0) {
                throw new NumberFormatException();
            }
            return n;
        } catch (NumberFormatException e) {
            throw new UsageException(name + " must be a non-negative integer, not " + v);
        }
    }

    boolean flag(String name, boolean dflt) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            return dflt;
        }
        switch (v.trim().toLowerCase()) {
            case "1":
            case "true":
            case "yes":
            case "on":
                return true;
            case "0":
            case "false":
            case "no":
            case "off":
                return false;
            default:
                throw new UsageException(name + " must be true or false, not " + v);
        }
    }
}
