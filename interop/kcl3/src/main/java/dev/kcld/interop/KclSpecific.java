package dev.kcld.interop;

import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClientBuilder;
import software.amazon.awssdk.services.dynamodb.model.ResourceNotFoundException;
import software.amazon.awssdk.services.dynamodb.model.TableDescription;
import software.amazon.kinesis.coordinator.CoordinatorConfig;
import software.amazon.kinesis.coordinator.CoordinatorConfig.ClientVersionConfig;
import software.amazon.kinesis.leases.LeaseManagementConfig;

/**
 * KCL 3.x only: the client version, and the lease owner index that dynalite cannot add to an existing table
 * ({@link LeaseOwnerIndexAtCreate}, on by default).
 */
final class KclSpecific {
    static final String GSI = LeaseOwnerIndexAtCreate.GSI;

    private KclSpecific() {}

    private static ClientVersionConfig clientVersion(Env env) {
        String v = env.get("KCL3_CLIENT_VERSION", "3X").trim().toUpperCase();
        if (!v.startsWith("CLIENT_VERSION_CONFIG_")) {
            v = "CLIENT_VERSION_CONFIG_" + v;
        }
        try {
            return ClientVersionConfig.valueOf(v);
        } catch (IllegalArgumentException e) {
            throw new Env.UsageException("KCL3_CLIENT_VERSION must be 3X, COMPATIBLE_WITH_2X or "
                    + "COMPATIBLE_WITH_2X_PHASE1, not " + v);
        }
    }

    /** Called before the DynamoDB client is built. */
    static void customizeDynamo(Env env, DynamoDbAsyncClientBuilder builder, String leaseTable) {
        if (env.flag("KCL3_GSI_AT_CREATE", true)) {
            builder.overrideConfiguration(c -> c.addExecutionInterceptor(new LeaseOwnerIndexAtCreate(leaseTable)));
        }
    }

    /** Called before the Scheduler starts. */
    static void preflight(Env env, DynamoDbAsyncClient dynamo, String leaseTable) throws Exception {
        ClientVersionConfig version = clientVersion(env);
        if (version == ClientVersionConfig.CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X_PHASE1
                || !env.flag("KCL3_REQUIRE_GSI", true)) {
            return;
        }
        TableDescription table;
        try {
            table = dynamo.describeTable(b -> b.tableName(leaseTable)).get().table();
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof ResourceNotFoundException) {
                return; // the KCL creates it, with the GSI (LeaseOwnerIndexAtCreate)
            }
            throw e;
        }
        boolean hasGsi = table.hasGlobalSecondaryIndexes()
                && table.globalSecondaryIndexes().stream().anyMatch(g -> GSI.equals(g.indexName()));
        if (!hasGsi) {
            throw new Env.UsageException("lease table " + leaseTable + " exists without the GSI " + GSI
                    + ", which KCL 3.x in " + version + " adds with UpdateTable: dynalite cannot do that."
                    + " Create the table with the GSI, or run with KCL3_CLIENT_VERSION=COMPATIBLE_WITH_2X_PHASE1"
                    + " (or KCL3_REQUIRE_GSI=false to try anyway)");
        }
    }

    static String configure(Env env, LeaseManagementConfig leaseManagement, CoordinatorConfig coordinator) {
        ClientVersionConfig version = clientVersion(env);
        coordinator.clientVersionConfig(version);
        String extra = "";
        if (env.has("KCL3_LEASE_ASSIGNMENT_INTERVAL_MS")) {
            long ms = env.positiveLong("KCL3_LEASE_ASSIGNMENT_INTERVAL_MS", 0);
            leaseManagement.leaseAssignmentIntervalMillis(ms);
            extra = " leaseAssignmentInterval " + ms + " ms";
        }
        return "clientVersion " + version + extra;
    }
}
