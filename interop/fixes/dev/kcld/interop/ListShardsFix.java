package dev.kcld.interop;

import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.core.SdkResponse;
import software.amazon.awssdk.core.interceptor.Context;
import software.amazon.awssdk.core.interceptor.ExecutionAttributes;
import software.amazon.awssdk.core.interceptor.ExecutionInterceptor;
import software.amazon.awssdk.services.kinesis.model.ListShardsRequest;
import software.amazon.awssdk.services.kinesis.model.ListShardsResponse;
import software.amazon.awssdk.services.kinesis.model.Shard;
import software.amazon.awssdk.services.kinesis.model.ShardFilterType;

/**
 * Emulator fix: kinesis-local (kinesis-mock) answers ListShards with ShardFilter AT_TRIM_HORIZON (and AT_TIMESTAMP
 * before a split) with every shard, children included. Kinesis answers only the shards open at that point, so
 * their hash ranges never overlap; the KCL checks that and, on a resharded stream with an empty lease table,
 * fails its first shard sync for ever ("Hash range of shards returned for ... was incomplete after 3 retries").
 * This drops, from such answers, every shard whose parent or adjacent parent is in the same answer.
 *
 * <p>The MultiLangDaemon jar registers it as an SDK global interceptor (hence public, with the implicit
 * no-argument constructor).
 */
public final class ListShardsFix implements ExecutionInterceptor {
    private static final Logger log = LoggerFactory.getLogger(ListShardsFix.class);

    @Override
    public SdkResponse modifyResponse(Context.ModifyResponse context, ExecutionAttributes attributes) {
        SdkResponse response = context.response();
        if (!(response instanceof ListShardsResponse) || !(context.request() instanceof ListShardsRequest)) {
            return response;
        }
        ListShardsRequest request = (ListShardsRequest) context.request();
        if (request.shardFilter() == null) {
            return response;
        }
        ShardFilterType type = request.shardFilter().type();
        if (type != ShardFilterType.AT_TRIM_HORIZON && type != ShardFilterType.AT_TIMESTAMP) {
            return response;
        }
        ListShardsResponse list = (ListShardsResponse) response;
        Set<String> ids = new HashSet<>();
        for (Shard s : list.shards()) {
            ids.add(s.shardId());
        }
        List<Shard> kept = list.shards().stream()
                .filter(s -> !(s.parentShardId() != null && ids.contains(s.parentShardId()))
                        && !(s.adjacentParentShardId() != null && ids.contains(s.adjacentParentShardId())))
                .collect(Collectors.toList());
        if (kept.size() == list.shards().size()) {
            return response;
        }
        log.info("ListShards {}: dropped {} shards whose parents are listed too (emulator fix)",
                type, list.shards().size() - kept.size());
        return list.toBuilder().shards(kept).build();
    }
}
