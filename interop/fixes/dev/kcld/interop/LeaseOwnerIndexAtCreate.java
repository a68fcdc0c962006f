package dev.kcld.interop;

import java.util.ArrayList;
import java.util.List;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.core.SdkRequest;
import software.amazon.awssdk.core.interceptor.Context;
import software.amazon.awssdk.core.interceptor.ExecutionAttributes;
import software.amazon.awssdk.core.interceptor.ExecutionInterceptor;
import software.amazon.awssdk.services.dynamodb.model.AttributeDefinition;
import software.amazon.awssdk.services.dynamodb.model.BillingMode;
import software.amazon.awssdk.services.dynamodb.model.CreateTableRequest;
import software.amazon.awssdk.services.dynamodb.model.GlobalSecondaryIndex;
import software.amazon.awssdk.services.dynamodb.model.KeySchemaElement;
import software.amazon.awssdk.services.dynamodb.model.KeyType;
import software.amazon.awssdk.services.dynamodb.model.Projection;
import software.amazon.awssdk.services.dynamodb.model.ProjectionType;
import software.amazon.awssdk.services.dynamodb.model.ScalarAttributeType;

/**
 * Emulator fix (KCL 3.x on dynalite): adds the lease owner GSI to the KCL's own CreateTable of the lease table.
 *
 * <p>KCL 3.x creates the lease table, then adds the GSI LeaseOwnerToLeaseKeyIndex with UpdateTable. dynalite
 * (4.0.0) has no GSI Create in UpdateTable (it answers a validation error for the missing ProvisionedThroughput,
 * and ignores the Create when one is given); with the GSI in the CreateTable the KCL finds it and skips the
 * UpdateTable.
 *
 * <p>The consumer app adds it to its DynamoDB client for its lease table. The MultiLangDaemon jar registers it
 * as an SDK global interceptor (no-argument constructor): then it applies to every CreateTable whose key is
 * {@code leaseKey} alone, which is the shape of a KCL lease table and of no other table the KCL creates.
 */
public final class LeaseOwnerIndexAtCreate implements ExecutionInterceptor {
    private static final Logger log = LoggerFactory.getLogger(LeaseOwnerIndexAtCreate.class);
    public static final String GSI = "LeaseOwnerToLeaseKeyIndex";

    /** null: any table keyed on leaseKey alone. */
    private final String leaseTable;

    /** For the SDK's global interceptor list: every lease-table-shaped CreateTable. */
    public LeaseOwnerIndexAtCreate() {
        this(null);
    }

    LeaseOwnerIndexAtCreate(String leaseTable) {
        this.leaseTable = leaseTable;
    }

    private boolean isLeaseTable(CreateTableRequest create) {
        if (leaseTable != null) {
            return leaseTable.equals(create.tableName());
        }
        return create.keySchema().size() == 1 && "leaseKey".equals(create.keySchema().get(0).attributeName());
    }

    @Override
    public SdkRequest modifyRequest(Context.ModifyRequest context, ExecutionAttributes attributes) {
        SdkRequest request = context.request();
        if (!(request instanceof CreateTableRequest)) {
            return request;
        }
        CreateTableRequest create = (CreateTableRequest) request;
        if (!isLeaseTable(create) || create.hasGlobalSecondaryIndexes()) {
            return request;
        }
        List<AttributeDefinition> definitions = new ArrayList<>(create.attributeDefinitions());
        if (definitions.stream().noneMatch(a -> "leaseOwner".equals(a.attributeName()))) {
            definitions.add(AttributeDefinition.builder()
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
                GSI, create.tableName());
        return create.toBuilder()
                .attributeDefinitions(definitions)
                .globalSecondaryIndexes(gsi.build())
                .build();
    }
}
