"""Trace messages as OpenAI chat-completions message dicts.

Langfuse and Braintrust both render prompts and completions given in this shape (the
gateway's own request format), so their serializers share it. A message with no text
keeps `content: null`, as OpenAI writes an assistant turn that only calls tools.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from destinations.trace import Message


class ChatFunction(TypedDict):
    name: str
    arguments: str


class ChatToolCall(TypedDict):
    id: str
    type: str
    function: ChatFunction


class ChatMessage(TypedDict):
    role: str
    content: str | None
    tool_calls: NotRequired[list[ChatToolCall]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


def chat_message(message: Message) -> ChatMessage:
    """One message; tool calls keep the model's raw JSON argument string."""
    out = ChatMessage(role=message.role, content=message.content)
    if message.tool_calls:
        out["tool_calls"] = [
            ChatToolCall(
                id=call.id,
                type="function",
                function=ChatFunction(name=call.name, arguments=call.arguments),
            )
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def chat_messages(messages: tuple[Message, ...]) -> list[ChatMessage]:
    """`chat_message` for each message, in order."""
    return [chat_message(message) for message in messages]
