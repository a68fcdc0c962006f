package dev.kcld.interop;

import java.util.ArrayList;
import java.util.List;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.core.SdkRequest;
import software.amazon.awssdk.core.interceptor.Context;
import software.amazon.awssdk.core.interceptor.ExecutionAttributes;
import software.amazon.awssdk.core.interceptor.ExecutionInterceptor;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClientBuilder;
import software.amazon.awssdk.services.dynamodb.model.AttributeDefinition;
import software.amazon.awssdk.services.dynamodb.model.BillingMode;
import software.amazon.awssdk.services.dynamodb.model.CreateTableRequest;
import software.amazon.awssdk.services.dynamodb.model.GlobalSecondaryIndex;
import software.amazon.awssdk.services.dynamodb.model.KeySchemaElement;
import software.amazon.awssdk.services.dynamodb.model.KeyType;
import software.amazon.awssdk.services.dynamodb.model.Projection;
import software.amazon.awssdk.services.dynamodb.model.ProjectionType;
import software.amazon.awssdk.services.dynamodb.model.ResourceNotFoundException;
import software.amazon.awssdk.services.dynamodb.model.ScalarAttributeType;
import software.amazon.awssdk.services.dynamodb.model.TableDescription;
import software.amazon.kinesis.coordinator.CoordinatorConfig;
import software.amazon.kinesis.coordinator.CoordinatorConfig.ClientVersionConfig;
import software.amazon.kinesis.leases.LeaseManagementConfig;

/**
 * KCL 3.x only: the client version, and the lease owner index that dynalite cannot add to an existing table.
 *
 * <p>KCL 3.x creates the lease table, then adds the GSI LeaseOwnerToLeaseKeyIndex with UpdateTable. dynalite
 * (4.0.0) has no GSI Create in UpdateTable (it answers a validation error for the missing ProvisionedThroughput,
 * and ignores the Create when one is given), so by default this app's DynamoDB client adds the same GSI to the
 * KCL's own CreateTable request of the lease table; the KCL then finds it and skips the UpdateTable.
 */
final class KclSpecific {
    private static final Logger log = LoggerFactory.getLogger(KclSpecific.class);
    static final String GSI = "LeaseOwnerToLeaseKeyIndex";

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
            builder.overrideConfiguration(c -> c.addExecutionInterceptor(new GsiAtCreate(leaseTable)));
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
                return; // the KCL creates it, with the GSI (GsiAtCreate)
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

    /** Adds the lease owner GSI to the KCL's CreateTable request for the lease table. */
    static final class GsiAtCreate implements ExecutionInterceptor {
        private final String leaseTable;

        GsiAtCreate(String leaseTable) {
            this.leaseTable = leaseTable;
        }

        @Override
        public SdkRequest modifyRequest(Context.ModifyRequest context, ExecutionAttributes attributes) {
            SdkRequest request = context.request();
            if (!(request instanceof CreateTableRequest)) {
                return request;
            }
            CreateTableRequest create = (CreateTableRequest) request;
            if (!leaseTable.equals(create.tableName()) || create.hasGlobalSecondaryIndexes()) {
                return request;
            }
            List<AttributeDefinition> attributes2 = new ArrayList<>(create.attributeDefinitions());
            if (attributes2.stream().noneMatch(a -> "leaseOwner".equals(a.attributeName()))) {
                attributes2.add(AttributeDefinition.builder()
                        .attributeName("leaseOwner")
                        .attributeType(ScalarAttributeType.S)
                        .build());
            }
            GlobalSecondaryIndex.Builder gsi = GlobalSecondaryIndex.builder()
                    .indexName(GSI)
                    .keySchema(
                            KeySchemaElement.builder().attributeName("leaseOwner").keyType(KeyType.HASH).build(),
                            KeySchemaElement.builder().attributeName("leaseKey").keyType(KeyType.RANGE).build())
                    .projection(Projection.builder().projectionType(ProjectionType.KEYS_ONLY).build());
            if (create.billingMode() != BillingMode.PAY_PER_REQUEST && create.provisionedThroughput() != null) {
                gsi.provisionedThroughput(create.provisionedThroughput());
            }
            log.info("adding GSI {} to the CreateTable of lease table {} (dynalite cannot add it later)",
                    GSI, leaseTable);
            return create.toBuilder()
                    .attributeDefinitions(attributes2)
                    .globalSecondaryIndexes(gsi.build())
                    .build();
        }
    }
}
