//! SQS queues and SNS topics on moto's server behind the account relay
//! (which routes each call to the owner's account and judges the queue's
//! or topic's policy), for the on-failure destination tests.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{Stack, REGION};

impl Stack {
    /// SQS as `account`.
    pub async fn sqs_as(&self, account: &str) -> aws_sdk_sqs::Client {
        let conf = self.config_as(account, REGION).await;
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&conf)
                .endpoint_url(&self.streams_endpoint)
                .build(),
        )
    }

    /// SNS as `account`.
    pub async fn sns_as(&self, account: &str) -> aws_sdk_sns::Client {
        let conf = self.config_as(account, REGION).await;
        aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(&conf)
                .endpoint_url(&self.streams_endpoint)
                .build(),
        )
    }

    /// A new queue of the producer account: its ARN and URL.
    pub async fn create_queue(&self, prefix: &str) -> Result<(String, String)> {
        let name = crate::unique_name(prefix);
        let sqs = self.sqs_as(&self.producer_account).await;
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .with_context(|| format!("CreateQueue {name}"))?
            .queue_url
            .context("CreateQueue answered no URL")?;
        let arn = format!("arn:aws:sqs:{REGION}:{}:{name}", self.producer_account);
        Ok((arn, url))
    }

    /// Lets the consumer account's roles send to the producer's queue.
    pub async fn share_queue(&self, arn: &str, url: &str) -> Result<()> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:aws:iam::{}:root", self.consumer_account) },
                "Action": "sqs:SendMessage",
                "Resource": arn,
            }],
        });
        self.sqs_as(&self.producer_account)
            .await
            .set_queue_attributes()
            .queue_url(url)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::Policy,
                policy.to_string(),
            )
            .send()
            .await
            .with_context(|| format!("SetQueueAttributes Policy {arn}"))?;
        Ok(())
    }

    /// Receives (and deletes) messages from the producer's queue until
    /// `count` arrived or `within` passed; their bodies.
    pub async fn receive_messages(
        &self,
        url: &str,
        count: usize,
        within: Duration,
    ) -> Result<Vec<String>> {
        let sqs = self.sqs_as(&self.producer_account).await;
        let deadline = Instant::now() + within;
        let mut bodies = Vec::new();
        while bodies.len() < count && Instant::now() < deadline {
            let out = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .with_context(|| format!("ReceiveMessage {url}"))?;
            for message in out.messages() {
                bodies.push(message.body().unwrap_or_default().to_owned());
                if let Some(handle) = message.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .context("DeleteMessage")?;
                }
            }
        }
        Ok(bodies)
    }

    /// A new topic of the producer account that the consumer account's
    /// roles may publish to, delivering to a new queue of the producer
    /// (moto delivers within one account): the topic's ARN and the queue's
    /// URL.
    pub async fn create_shared_topic(&self, prefix: &str) -> Result<(String, String)> {
        let sns = self.sns_as(&self.producer_account).await;
        let name = crate::unique_name(prefix);
        let topic = sns
            .create_topic()
            .name(&name)
            .send()
            .await
            .with_context(|| format!("CreateTopic {name}"))?
            .topic_arn
            .context("CreateTopic answered no ARN")?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:aws:iam::{}:root", self.consumer_account) },
                "Action": "sns:Publish",
                "Resource": topic,
            }],
        });
        sns.set_topic_attributes()
            .topic_arn(&topic)
            .attribute_name("Policy")
            .attribute_value(policy.to_string())
            .send()
            .await
            .context("SetTopicAttributes Policy")?;
        let (queue_arn, url) = self.create_queue(&format!("{prefix}-sub")).await?;
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .send()
            .await
            .context("Subscribe")?;
        Ok((topic, url))
    }
}
