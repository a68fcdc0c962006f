package dev.kcld.interop;

import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClientBuilder;
import software.amazon.kinesis.coordinator.CoordinatorConfig;
import software.amazon.kinesis.leases.LeaseManagementConfig;

/** KCL 2.x: nothing beyond the shared configuration (the KCL 3.x module's twin). */
final class KclSpecific {
    private KclSpecific() {}

    static void customizeDynamo(Env env, DynamoDbAsyncClientBuilder builder, String leaseTable) {}

    static void preflight(Env env, DynamoDbAsyncClient dynamo, String leaseTable) {}

    static String configure(Env env, LeaseManagementConfig leaseManagement, CoordinatorConfig coordinator) {
        return "(KCL 2.x)";
    }
}
