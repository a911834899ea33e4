// Unit's Node SDK, used as a service would: a placeholder token, the proxy and CA from the
// environment (HTTPS_PROXY / HTTP_PROXY, NODE_EXTRA_CA_CERTS). Prints what it saw as JSON.
const { Unit } = require("@unit-finance/unit-node-sdk");

async function main() {
  const base = process.env.UNIT_BASE_URL;
  const customer = new Unit("unitgw:customer:10001", base);
  const org = new Unit("unitgw:org", base);
  const cards = await customer.cards.list();
  const card = await customer.cards.get(cards.data[0].id);
  const customers = await org.customers.list();
  let refused = null;
  try {
    await new Unit("unitgw:customer:", base).cards.list();
  } catch (error) {
    refused = { status: error.errors?.[0]?.status ?? null, code: error.errors?.[0]?.code ?? null };
  }
  console.log(
    JSON.stringify({
      cardCustomers: cards.data.map((c) => c.relationships.customer.data.id),
      cardId: card.data.id,
      customers: customers.data.length,
      refused,
    }),
  );
}

main().catch((error) => {
  console.error("node client failed:", error.status ?? "", error.message ?? error);
  process.exit(1);
});
